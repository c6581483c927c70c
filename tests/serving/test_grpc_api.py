"""The gRPC API against a real server on 127.0.0.1: every RPC, every error class, TF Serving's
example-client call styles, and REST/gRPC agreement on the same inputs."""
from __future__ import annotations

import ipaddress
import socket

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from repo_files import copy_version, write_config
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.config import model_server_config_pb2

from localhost.ports import free_port
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.errors import InvalidArgument
from serving.grpc_service import CONNECTION_DEFAULTS, is_loopback, server_options
from serving.process import ServerProcess
from serving.signatures import classification_result, regression_result, serialized_examples

pytestmark = pytest.mark.xdist_group("reference_server")


@pytest.fixture
def server(reference_server):
    """The server this module shares with test_rest_api.py (conftest.py): half_plus_two 123 and 124, digits."""
    return reference_server


@pytest.fixture
def client(server):
    with GrpcClient(server.target) as c:
        yield c


def test_predict_with_version_label_and_output_filter(client):
    x = np.array([[1.0], [2.0]], np.float32)
    assert client.predict("half_plus_two", {"x": x})["y"].tolist() == [[2.5], [3.0]]
    assert client.predict("half_plus_two", {"x": x}, version=123)["y"].tolist() == [[2.5], [3.0]]
    assert client.predict("half_plus_two", {"x": x}, label="stable", output_filter=["y"])["y"].shape == (2, 1)


def test_classify_regress_and_multi_inference(server, client):
    assert client.classify("half_plus_two", [{"x": 20.0}], signature_name="classify_x_to_y") == [[("", 12.0)]]
    assert client.regress("half_plus_two", [{"x": 80.0}], signature_name="regress_x_to_y") == [42.0]
    assert client.regress("half_plus_two", [{}, {"x": 2.0}], context={"x": 4.0},
                          signature_name="regress_x_to_y2") == [5.0, 4.0]
    request = inference_pb2.MultiInferenceRequest()
    for signature in ("regress_x_to_y", "regress_x_to_y2"):
        task = request.tasks.add(method_name="tensorflow/serving/regress")
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(10.0)
    with grpc.insecure_channel(server.target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(request, timeout=10)
    assert [r.regression_result.regressions[0].value for r in response.results] == [7.0, 8.0]
    assert [r.model_spec.version.value for r in response.results] == [124, 124]  # the latest


def test_metadata_and_status(client):
    metadata = client.metadata("half_plus_two")
    assert (metadata["model"], metadata["version"]) == ("half_plus_two", 124)  # the latest
    assert metadata["signatures"]["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [-1, 1]}}
    assert client.status("half_plus_two") == [
        {"version": 124, "state": "AVAILABLE", "error_code": "OK", "error_message": ""},
        {"version": 123, "state": "AVAILABLE", "error_code": "OK", "error_message": ""}]


def test_both_clients_are_one_interface(server, client, digits):
    """The same calls on the same server give the same types and numbers over REST and gRPC."""
    rows = digits.x_test[:5].astype(np.float64)  # cast to the signature's float32 by both clients
    with RestClient(server.url) as rest:
        for method, args, kwargs in [
            ("predict", ("digits", {"x": rows}), {}),
            ("predict", ("digits", rows), {"output_filter": ["class_id"]}),
            ("predict", ("half_plus_two", [[1.0], [2.0]]), {"label": "stable"}),
            ("predict", ("half_plus_two", np.ones((2, 1), np.int32)), {}),
            ("classify", ("digits", [{"x": rows[0]}]), {"signature_name": "classify"}),
            ("classify", ("half_plus_two", [{"x": 20.0}]), {"signature_name": "classify_x_to_y"}),
            ("regress", ("half_plus_two", [{}, {"x": 2.0}]), {"context": {"x": 4.0}, "signature_name": "regress_x_to_y2"}),
            ("status", ("digits",), {}),
            ("metadata", ("digits",), {}),
        ]:
            by_rest, by_grpc = getattr(rest, method)(*args, **kwargs), getattr(client, method)(*args, **kwargs)
            if method == "predict":
                assert by_rest.keys() == by_grpc.keys()
                for name in by_rest:
                    assert by_rest[name].dtype == by_grpc[name].dtype, (args, name)
                    np.testing.assert_array_equal(by_rest[name], by_grpc[name])
            else:
                assert by_rest == by_grpc, (method, args)
                assert type(by_rest) is type(by_grpc)
    predicted = client.predict("digits", rows)
    assert predicted["probabilities"].dtype == np.float32 and predicted["class_id"].dtype == np.int64
    assert (predicted["class_id"] == digits.y_test[:5]).mean() >= 0.6


def test_both_clients_take_rows_of_named_inputs(server, client):
    """README's per-row dicts (TF Serving's row format) to a model of two inputs, over REST and gRPC; rows that do not
    agree are refused before anything is sent, naming the row and the input."""
    import tabular_model

    rows = [{"x": [46.1, 13.2, 211.0, 4500.0, 2007.0], "city": "rome"}, {"x": [1, 2, 3, 4, 5], "city": "oslo"}]
    expected = [tabular_model.score(row["x"], row["city"]) for row in rows]
    with RestClient(server.url) as rest:
        for each in (rest, client):
            assert each.predict("tabular", rows)["score"].tolist() == pytest.approx(expected, rel=1e-6)
            with pytest.raises(ValueError, match=r"row 1 has inputs \['x'\], row 0 has \['city', 'x'\]"):
                each.predict("tabular", [rows[0], {"x": rows[1]["x"]}])
            with pytest.raises(ValueError, match=r"row 1, input 'x': shape \[4\], row 0 has \[5\]"):
                each.predict("tabular", [rows[0], {"x": [1, 2, 3, 4], "city": "oslo"}])


def test_mnist_client_style_future_call_reading_float_val(server, digits):
    """tensorflow_serving/example/mnist_client.py: Predict.future, then outputs[...].float_val."""
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.model_spec.signature_name = "serving_default"
        image = digits.x_test[0]
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(image, shape=[1, image.size]))
        result_future = stub.Predict.future(request, 5.0)
        response = np.array(result_future.result().outputs["probabilities"].float_val)
    assert response.shape == (10,)
    assert abs(response.sum() - 1.0) < 1e-4


def test_resnet_client_style_sync_call_with_make_ndarray(server):
    """tensorflow_serving/example/resnet_client_grpc.py: blocking Predict, tf.make_ndarray on outputs."""
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.model_spec.signature_name = "serving_default"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[4.0]], dtype=tf.float32))
        result = stub.Predict(request, 10.0)
    assert tf.make_ndarray(result.outputs["y"]).tolist() == [[4.0]]
    assert result.model_spec.name == "half_plus_two" and result.model_spec.version.value == 124  # the latest


def test_messages_larger_than_grpcs_default_4mib_are_accepted(client):
    x = np.ones((1_500_000, 1), np.float32)  # 6 MB in, 6 MB out
    assert client.predict("half_plus_two", {"x": x})["y"].shape == (1_500_000, 1)


ERRORS = [  # (call, expected gRPC code, substring of the message)
    (lambda c: c.predict("nope", {"x": np.ones((1, 1), np.float32)}), "NOT_FOUND",
     "Servable not found for request: Latest(nope)"),
    (lambda c: c.predict("half_plus_two", {"x": np.ones((1, 1), np.float32)}, version=9), "NOT_FOUND",
     "Specific(half_plus_two, 9)"),
    (lambda c: c.predict("half_plus_two", {"x": np.ones((1, 1), np.float32)}, label="nope"), "INVALID_ARGUMENT",
     "Unrecognized servable version label: nope"),
    (lambda c: c.predict("half_plus_two", {"x": np.ones((1, 1), np.float32)}, signature_name="nope"),
     "FAILED_PRECONDITION", 'Serving signature key "nope" not found.'),
    (lambda c: c.predict("half_plus_two", {"z": np.ones((1, 1), np.float32)}), "INVALID_ARGUMENT",
     "input size does not match signature: 1!=1 len({z}) != len({x}). Sent extra: {z}. Missing but required: {x}."),
    (lambda c: c.predict("half_plus_two", {"x": np.ones((1, 1), np.float32)}, output_filter=["w"]),
     "INVALID_ARGUMENT", "output tensor alias not found in signature: w Outputs expected to be in the set {y}."),
    (lambda c: c.predict("digits", {"x": np.ones((2, 3), np.float32)}), "INVALID_ARGUMENT",
     "Incompatible shapes: [2,3] vs. [1,64]\n\t [[{{function_node "),  # the session's error, as TF Serving passes it on
    (lambda c: c.predict("conv", {"x": np.ones((2, 8, 8), np.float32)}), "INVALID_ARGUMENT",  # would abort the server
     "input 'x' has shape [2,8,8], which cannot be fed to the signature's [-1,8,8,3]: it needs 4 dimensions, not 3"),
    (lambda c: c.classify("half_plus_two", [], signature_name="classify_x_to_y"), "INVALID_ARGUMENT", "Input is empty."),
    (lambda c: c.regress("half_plus_two", [{"x": 1.0}], signature_name="nope"), "INVALID_ARGUMENT",
     "No signature was found with the name: nope"),
    (lambda c: c.regress("half_plus_two", [{"x": 1.0}], signature_name="regress_x2_to_y3"), "INVALID_ARGUMENT",
     "Expects arg[0] to be float but string is provided"),  # its input is not the examples: the session's words
    (lambda c: c.status("nope"), "NOT_FOUND", "Could not find any versions of model nope"),
]


@pytest.mark.parametrize("request_call, code, message", ERRORS)
def test_errors_use_tf_servings_status_codes(client, request_call, code, message):
    with pytest.raises(ServingClientError) as info:
        request_call(client)
    assert info.value.status == code
    assert message in info.value.message


def test_an_input_of_another_dtype_is_refused_by_the_server(server):
    """The project's clients cast to the signature's dtypes; a raw request that does not is refused in the words of
    TF Serving's session (FunctionCallFrame::SetArgs)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1), np.int32)))
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Expects arg[0] to be float but int32 is provided"


def raw_predict(server, tensor: tensor_pb2.TensorProto) -> grpc.RpcError:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tensor)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return info.value


def float_tensor(dims: list[int], **content) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, **content)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize("tensor", [
    float_tensor([2, 1], tensor_content=b"abc"),  # content that is not 2 floats
    float_tensor([-3, 1], float_val=[1.0]),  # a negative size
    tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE),  # dtypes a request cannot carry
    tensor_pb2.TensorProto(dtype=types_pb2.DT_VARIANT),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID, float_val=[1.0]),
], ids=["content", "negative-dim", "resource", "variant", "invalid"])
def test_tensor_protos_that_do_not_parse_are_tf_servings_parsing_error(server, tensor):
    error = raw_predict(server, tensor)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details() == "tensor parsing error: x"


@pytest.mark.parametrize("tensor, y", [
    (float_tensor([1, 1], float_val=[1.0, 2.0]), [[2.5]]),  # values past the shape are ignored
    (float_tensor([3, 1], float_val=[1.0, 2.0]), [[2.5], [3.0], [3.0]]),  # the last value fills the shape
    (float_tensor([2, 1]), [[2.0], [2.0]]),  # no values: zeros
], ids=["more", "fewer", "none"])
def test_typed_values_that_do_not_fill_the_shape_are_read_as_tf_does(server, tensor, y):
    """tensor.cc FromProtoField: TF Serving answers these, it does not refuse them."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tensor)
    with grpc.insecure_channel(server.target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == y


def test_a_tiny_proto_declaring_gigabytes_is_refused_before_anything_is_allocated(server):
    error = raw_predict(server, float_tensor([1, 500_000_000], float_val=[1.0]))  # 2 GB as TF would fill it
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details().startswith("input 'x' declares shape [1, 500000000] of float: the request's tensors would "
                                      "expand to 2000000000 bytes beyond what it carries; the limit is 67108864 "
                                      "(--grpc_max_tensor_bytes)")
    with grpc.insecure_channel(server.target) as channel:  # and the server is fine
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones((1, 1), np.float32)))
        assert prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30).outputs["y"]


@pytest.mark.parametrize("rpc, request_class", [
    ("Predict", predict_pb2.PredictRequest), ("Classify", classification_pb2.ClassificationRequest),
    ("Regress", regression_pb2.RegressionRequest), ("GetModelMetadata", get_model_metadata_pb2.GetModelMetadataRequest),
    ("GetModelStatus", get_model_status_pb2.GetModelStatusRequest),
])
def test_a_request_without_model_spec_is_tf_servings_missing_modelspec(server, rpc, request_class):
    """predict_impl.cc, classification_service.cc, regression_service.cc, get_model_metadata_impl.cc and
    get_model_status_impl.cc check has_model_spec() first; an empty name inside a spec is server_core.cc's
    INVALID_ARGUMENT, except for status, which looks it up (NOT_FOUND)."""
    with grpc.insecure_channel(server.target) as channel:
        stub = (model_service_pb2_grpc.ModelServiceStub if rpc == "GetModelStatus"
                else prediction_service_pb2_grpc.PredictionServiceStub)(channel)
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, rpc)(request_class(), timeout=10)
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        empty_name = request_class()
        empty_name.model_spec.SetInParent()
        if rpc == "GetModelMetadata":
            empty_name.metadata_field.append("signature_def")
        with pytest.raises(grpc.RpcError) as info:
            getattr(stub, rpc)(empty_name, timeout=10)
        expected = ((grpc.StatusCode.NOT_FOUND, "Could not find any versions of model ") if rpc == "GetModelStatus"
                    else (grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."))
        assert (info.value.code(), info.value.details()) == expected


NO_REGRESSION_OUTPUTS = "No regression outputs found in SignatureDef: inputs {"


@pytest.mark.parametrize("rpc, signature, with_input, message", [
    ("Regress", "nope", False, "No signature was found with the name: nope"),  # the signature before the input
    ("Classify", "classify_x_to_y", False, "Input is empty."),
    ("Regress", "classify_x_to_y", True, NO_REGRESSION_OUTPUTS),  # no method check by default, as in TF Serving
    ("Regress", "regress_x_to_y_and_y2", True, "Expected one output Tensor."),  # before the input's name
    ("Regress", "regress_x_to_misnamed_output", True, NO_REGRESSION_OUTPUTS),
    ("Classify", "classify_x_to_y_y2_y3", True, "Expected one or two output Tensors, found 3"),
    ("Classify", "regress_x_to_y_and_y2", True, "No classification inputs found in SignatureDef: inputs {"),
    ("Classify", "regress_x_to_misnamed_output", True,
     'Expected classification signature outputs to contain at least one of "classes" or "scores". Signature was: '),
])
def test_classify_and_regress_check_signatures_in_tf_servings_order(server, rpc, signature, with_input, message):
    """classifier.cc PreProcessClassification and regressor.cc PreProcessRegression, before the input is read."""
    request = (classification_pb2.ClassificationRequest if rpc == "Classify" else regression_pb2.RegressionRequest)()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = signature
    if with_input:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        getattr(prediction_service_pb2_grpc.PredictionServiceStub(channel), rpc)(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(message), info.value.details()


@pytest.mark.parametrize("check, outputs, message", [
    ("classify", {"scores": np.zeros((2, 3, 1), np.float32)},
     "Expected Tensor shape: [batch_size num_classes] but got [2,3,1]"),
    ("classify", {"scores": np.zeros((2, 3), np.int32)}, "Expected scores Tensor of DT_FLOAT. Got: DT_INT32"),
    ("classify", {"classes": np.zeros((2, 3), np.float32)}, "Expected classes Tensor of DT_STRING. Got: DT_FLOAT"),
    ("regress", {"outputs": np.zeros((2, 2), np.float32)},
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [2,2]"),
    ("regress", {"outputs": np.zeros(3, np.int32)}, "Input batch size did not match output batch size: 2 vs. 3"),
    ("regress", {"outputs": np.zeros(2, np.float64)}, "Expected output Tensor of DT_FLOAT.  Got: DT_DOUBLE"),
])
def test_model_outputs_are_checked_in_tf_servings_order_and_words(check, outputs, message):
    """classifier.cc PostProcessClassificationResult, regressor.cc PostProcessRegressionResult."""
    result = classification_result if check == "classify" else regression_result
    with pytest.raises(InvalidArgument) as error:
        result(outputs, 2)
    assert str(error.value) == message


REGRESS, CLASSIFY = "tensorflow/serving/regress", "tensorflow/serving/classify"


@pytest.mark.parametrize("tasks, with_input, code, message", [
    ([], True, "INVALID_ARGUMENT", "ModelSpec has no name specified."),  # the first task's model is looked up first
    ([("nope", "regress_x_to_y", REGRESS), ("half_plus_two", "regress_x_to_y", REGRESS)], True, "NOT_FOUND",
     "Servable not found for request: Latest(nope)"),
    ([("half_plus_two", "regress_x_to_y", REGRESS), ("", "regress_x_to_y2", REGRESS)], True, "INVALID_ARGUMENT",
     "Found ModelSpec with an empty model name."),
    ([("half_plus_two", "regress_x_to_y", REGRESS), ("digits", "regress_x_to_y2", REGRESS)], True, "INVALID_ARGUMENT",
     "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
    ([("half_plus_two", "regress_x_to_y", REGRESS), ("half_plus_two", "regress_x_to_y", REGRESS)], True,
     "INVALID_ARGUMENT", "Duplicate evaluation of signature: regress_x_to_y"),
    ([("half_plus_two", "nope", REGRESS)], True, "INVALID_ARGUMENT", "Requested signature not found in model graph: nope"),
    ([("half_plus_two", "serving_default", "tensorflow/serving/predict")], True, "UNIMPLEMENTED",
     "Unsupported signature method_name: tensorflow/serving/predict"),
    ([("half_plus_two", "regress_x_to_y_and_y2", REGRESS)], True, "INVALID_ARGUMENT", "Expected one output Tensor."),
    # every task is checked before the input is read, each in turn
    ([("half_plus_two", "regress_x_to_y", REGRESS), ("half_plus_two", "classify_x_to_y", "other")], False,
     "UNIMPLEMENTED", "Unsupported signature method_name: other"),
    ([("half_plus_two", "regress_x_to_y", REGRESS), ("half_plus_two", "classify_x_to_y", CLASSIFY)], False,
     "INVALID_ARGUMENT", "Input is empty."),
])
def test_multi_inference_checks_in_tf_servings_order(server, tasks, with_input, code, message):
    """multi_inference_helper.cc, then multi_inference.cc TensorFlowMultiInferenceRunner::Infer, task by task."""
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, signature
    if with_input:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.0)
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(request, timeout=10)
    assert (info.value.code().name, info.value.details()) == (code, message)


def test_metadata_needs_the_signature_def_field(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = "half_plus_two"
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelMetadata(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request.metadata_field.append("other")
        with pytest.raises(grpc.RpcError, match="Metadata field other is not supported"):
            stub.GetModelMetadata(request, timeout=10)


def test_reload_config_adds_and_removes_models_while_serving(tmp_path, half_plus_two_base, digits):
    """On a server of its own: the reload changes what it serves."""
    copy_version(half_plus_two_base, 123, tmp_path / "hpt" / "123")
    models = write_config(tmp_path / "models.config", [("half_plus_two", tmp_path / "hpt", ""),
                                                       ("digits", digits.base, "")])
    grpc_port = free_port()
    server = ServerProcess(f"--model_config_file={models}", f"--port={grpc_port}", log_dir=tmp_path)
    try:
        server.wait_available("half_plus_two")
        server.wait_available("digits")
        copy_version(half_plus_two_base, 123, tmp_path / "second" / "7")
        config = model_server_config_pb2.ModelServerConfig()  # digits is left out: it must unload
        for name, base in (("second", tmp_path / "second"), ("half_plus_two", tmp_path / "hpt")):
            config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel, \
                GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            response = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                                      timeout=60)
            assert response.status.error_code == 0
            assert client.predict("second", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]
            assert client.status("digits")[0]["state"] == "END"
            with pytest.raises(ServingClientError, match="Latest\\(digits\\)"):
                client.predict("digits", {"x": np.zeros((1, 64), np.float32)})
            bad = model_server_config_pb2.ModelServerConfig()
            bad.model_config_list.config.add(name="x")
            with pytest.raises(grpc.RpcError) as info:
                stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=bad), timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "has no base_path" in info.value.details()
            assert client.predict("half_plus_two", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]
        status = requests.get(f"{server.url}/v1/models/second", timeout=10).json()["model_version_status"]
        assert status[0]["version"] == "7"
    finally:
        assert server.stop() == 0, server.log_tail()


def this_machines_address() -> str | None:
    """An address of this machine that is not loopback (None when it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


def reload(target: str, config: model_server_config_pb2.ModelServerConfig) -> grpc.RpcError | None:
    with grpc.insecure_channel(target) as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                model_management_pb2.ReloadConfigRequest(config=config), timeout=60)
        except grpc.RpcError as e:
            return e
    return None


@pytest.mark.parametrize("peer, loopback", [
    ("ipv4:127.0.0.1:5000", True), ("ipv6:[::1]:5000", True), ("ipv6:%5B::1%5D:5000", True), ("unix:/tmp/s", True),
    ("ipv4:10.1.2.3:5000", False), ("ipv6:[2001:db8::1]:443", False), ("weird", False),
])
def test_loopback_peers_are_recognised(peer, loopback):
    assert is_loopback(peer) is loopback


def test_reloads_come_from_this_machine_and_name_base_paths_inside_the_root(tmp_path, half_plus_two_base):
    """A reload loads models from any directory the server can read: only this machine may ask (serving is for
    everyone), and with --model_base_path_root only for directories that resolve inside it."""
    root, outside = tmp_path / "models", tmp_path / "elsewhere"
    copy_version(half_plus_two_base, 123, root / "inside" / "1")
    copy_version(half_plus_two_base, 123, outside / "1")
    (root / "link").symlink_to(outside)  # inside by name, outside in fact
    grpc_port = free_port()
    process = ServerProcess(f"--model_base_path={root / 'inside'}", "--model_name=inside", f"--port={grpc_port}",
                            f"--model_base_path_root={root}", "--host=0.0.0.0", log_dir=tmp_path)
    local = f"127.0.0.1:{grpc_port}"
    try:
        process.wait_available("inside")
        for name, base in (("outside", outside), ("link", root / "link")):
            config = model_server_config_pb2.ModelServerConfig()
            config.model_config_list.config.add(name=name, base_path=str(base), model_platform="tensorflow")
            error = reload(local, config)
            assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert error.details() == f"model '{name}': its base_path is outside --model_base_path_root"
        config = model_server_config_pb2.ModelServerConfig()
        config.model_config_list.config.add(name="again", base_path=str(root / "inside"), model_platform="tensorflow")
        address = this_machines_address()
        if address is not None:
            error = reload(f"{address}:{grpc_port}", config)
            assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "accepted only from this machine (loopback)" in error.details()
            with GrpcClient(f"{address}:{grpc_port}") as client:
                assert client.predict("inside", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]
        assert reload(local, config) is None
        process.wait_available("again")
    finally:
        process.stop()
    if address is None:
        pytest.skip("checked the root; this machine has no address but loopback to try a remote reload from")


def test_context_features_are_merged_into_every_example():
    raw = input_pb2.Input()
    context = raw.example_list_with_context.context
    context.features.feature["x"].float_list.value.append(4.0)
    raw.example_list_with_context.examples.add()
    merged = tf.train.Example.FromString(serialized_examples(raw)[0])
    assert merged.features.feature["x"].float_list.value == [4.0]


def test_channel_arguments_set_the_message_limit_and_oversize_is_resource_exhausted(tmp_path, half_plus_two_base):
    grpc_port = free_port()
    server = ServerProcess("--model_name=hpt", f"--model_base_path={half_plus_two_base}", f"--port={grpc_port}",
                           "--grpc_channel_arguments=grpc.max_receive_message_length=4096", log_dir=tmp_path)
    try:
        server.wait_available("hpt")
        with GrpcClient(f"127.0.0.1:{grpc_port}") as client:
            assert client.predict("hpt", {"x": np.ones((10, 1), np.float32)})["y"].shape == (10, 1)
            with pytest.raises(ServingClientError) as info:
                client.predict("hpt", {"x": np.ones((5000, 1), np.float32)})
            assert info.value.status == "RESOURCE_EXHAUSTED"
            assert client.predict("hpt", {"x": np.ones((1, 1), np.float32)})["y"].tolist() == [[2.5]]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("text, expected", [
    ("", {"grpc.max_send_message_length": 2**31 - 1, "grpc.max_receive_message_length": 2**31 - 1,
          **CONNECTION_DEFAULTS}),
    ("grpc.max_receive_message_length=10, grpc.primary_user_agent=x, grpc.max_connection_idle_ms=-1",
     {"grpc.max_send_message_length": 2**31 - 1, "grpc.max_receive_message_length": 10,
      **CONNECTION_DEFAULTS, "grpc.primary_user_agent": "x", "grpc.max_connection_idle_ms": -1}),
])
def test_channel_arguments_parse_like_tf_serving(text, expected):
    assert dict(server_options(text)) == expected
    assert CONNECTION_DEFAULTS == {"grpc.max_allowed_incoming_connections": 1024,  # as SECURITY.md says
                                   "grpc.server_handshake_timeout_ms": 30_000, "grpc.max_connection_idle_ms": 30_000,
                                   "grpc.keepalive_time_ms": 60_000, "grpc.keepalive_timeout_ms": 20_000}
    with pytest.raises(ValueError, match="expected key=value, received 'oops'"):
        server_options("oops")


def test_a_failed_request_is_counted_like_any_other(server):
    """Every exception goes through one function on both front ends (as_serving_error: anything unexpected is
    INTERNAL, tested in test_rest_api.py): no UNKNOWN, always a metric. DT_VARIANT made make_ndarray raise a
    KeyError, answered INTERNAL; it is a client's mistake, answered as TF Serving does."""
    error = raw_predict(server, tensor_pb2.TensorProto(dtype=types_pb2.DT_VARIANT))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    metrics = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10).text
    assert 'api="predict",entrypoint="GRPC",model="half_plus_two",status="INVALID_ARGUMENT"' in metrics
