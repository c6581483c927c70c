"""Clients for a TF Serving-compatible server (ours or tensorflow_model_server).

`RestClient` speaks the REST API (JSON in, JSON out); `GrpcClient` has the same methods over
gRPC (numpy in, numpy out). Every failure the server reports raises `ServingClientError`
carrying the server's status (HTTP status, or gRPC code name) and its message.
"""
from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.codec import example_from_json
from serving.protos import MAX_MESSAGE_BYTES


class ServingClientError(Exception):
    """The server answered with an error; `status` is the HTTP status (or gRPC code name)."""

    def __init__(self, status: int | str, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class RestClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8501", timeout_s: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def predict(self, model: str, instances: list | None = None, inputs: Any = None, *,
                signature_name: str | None = None, version: int | None = None, label: str | None = None) -> Any:
        """Row format (`instances`) returns the predictions; columnar (`inputs`) the outputs."""
        if (instances is None) == (inputs is None):
            raise ValueError("pass exactly one of `instances` (row format) or `inputs` (columnar format)")
        body: dict[str, Any] = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        answer = self._call("POST", _model_path(model, version, label) + ":predict", body)
        return answer["predictions"] if instances is not None else answer["outputs"]

    def classify(self, model: str, examples: list[dict], *, context: dict | None = None,
                 signature_name: str | None = None, version: int | None = None, label: str | None = None) -> list:
        """Per example, a list of [class label, score] pairs."""
        return self._examples("classify", model, examples, context, signature_name, version, label)

    def regress(self, model: str, examples: list[dict], *, context: dict | None = None,
                signature_name: str | None = None, version: int | None = None, label: str | None = None) -> list:
        """Per example, one value."""
        return self._examples("regress", model, examples, context, signature_name, version, label)

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[dict]:
        """The model_version_status list: version, state, status, newest first."""
        return self._call("GET", _model_path(model, version, label))["model_version_status"]

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        return self._call("GET", _model_path(model, version, label) + "/metadata")

    def _examples(self, api, model, examples, context, signature_name, version, label) -> list:
        body: dict[str, Any] = {"examples": [_as_json(e) for e in examples]}
        if context is not None:
            body["context"] = _as_json(context)
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", _model_path(model, version, label) + f":{api}", body)["results"]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body, allow_nan=True).encode()
        response = self._session.request(method, self.base_url + path, data=data, timeout=self.timeout_s,
                                         headers={"Content-Type": "application/json"} if data else None)
        try:
            answer = response.json()
        except ValueError:
            raise ServingClientError(response.status_code, response.text.strip()[:500]) from None
        if response.status_code != 200:
            message = answer.get("error", response.text) if isinstance(answer, dict) else response.text
            raise ServingClientError(response.status_code, message)
        return answer


def _model_path(model: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("pass `version` or `label`, not both")
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{quote(label, safe='')}"
    return path


class GrpcClient:
    """TF Serving's PredictionService and ModelService, with the REST client's methods."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout_s: float = 30.0):
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def predict(self, model: str, inputs: dict[str, Any], *, signature_name: str | None = None,
                version: int | None = None, label: str | None = None,
                output_filter: list[str] = ()) -> dict[str, np.ndarray]:
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        _fill_spec(request.model_spec, model, version, label, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._prediction.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def classify(self, model: str, examples: list[dict], *, context: dict | None = None,
                 signature_name: str | None = None, version: int | None = None, label: str | None = None) -> list:
        """Per example, a list of [class label, score] pairs, as the REST client returns."""
        request = classification_pb2.ClassificationRequest(input=_input(examples, context))
        _fill_spec(request.model_spec, model, version, label, signature_name)
        result = self._call(self._prediction.Classify, request).result
        return [[[c.label, c.score] for c in entry.classes] for entry in result.classifications]

    def regress(self, model: str, examples: list[dict], *, context: dict | None = None,
                signature_name: str | None = None, version: int | None = None, label: str | None = None) -> list:
        request = regression_pb2.RegressionRequest(input=_input(examples, context))
        _fill_spec(request.model_spec, model, version, label, signature_name)
        return [r.value for r in self._call(self._prediction.Regress, request).result.regressions]

    def status(self, model: str, version: int | None = None, label: str | None = None) -> list[dict]:
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, model, version, label, None)
        response = self._call(self._models.GetModelStatus, request)
        return [{"version": str(s.version), "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
                 "status": {"error_code": s.status.error_code, "error_message": s.status.error_message}}
                for s in response.model_version_status]

    def metadata(self, model: str, version: int | None = None, label: str | None = None) -> dict:
        """{"model_spec": ModelSpec, "signature_def": {name: SignatureDef}}."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_spec(request.model_spec, model, version, label, None)
        response = self._call(self._prediction.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return {"model_spec": response.model_spec, "signature_def": dict(signatures.signature_def)}

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as e:
            raise ServingClientError(e.code().name, e.details()) from None


def _fill_spec(spec, model: str, version: int | None, label: str | None, signature_name: str | None) -> None:
    if version is not None and label is not None:
        raise ValueError("pass `version` or `label`, not both")
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label
    if signature_name:
        spec.signature_name = signature_name


def _input(examples: list[dict], context: dict | None) -> input_pb2.Input:
    converted = [example_from_json(_as_json(e)) for e in examples]
    if context is None:
        return input_pb2.Input(example_list=input_pb2.ExampleList(examples=converted))
    return input_pb2.Input(example_list_with_context=input_pb2.ExampleListWithContext(
        examples=converted, context=example_from_json(_as_json(context))))


def _as_json(value: Any) -> Any:
    """Features as the REST JSON carries them (numpy as lists, bytes as {"b64": ...}), so both clients
    send the same tf.Example: the server's conversion (serving.codec.example_from_json) decides it."""
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray | np.generic):
        return _as_json(value.tolist())
    if isinstance(value, list | tuple):
        return [_as_json(v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    return value
