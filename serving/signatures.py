"""What Predict, Classify, Regress and MultiInference mean for a signature, with TF Serving's checks and messages.

Ported in substance from TF Serving's predict_util.cc, classifier.cc, regressor.cc and multi_inference_helper.cc:
which signature is used, which inputs and outputs it must have, and how outputs become results. Each rule is
applied once per request, in TF Serving's order; the running itself is the caller's (batched or not), these
functions only decide and shape. Method names are checked only with --enable_signature_method_name_check (off by
default, as in TF Serving).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import inference_pb2, input_pb2

from serving.codec.dtypes import shape_string
from serving.errors import FailedPrecondition, Internal, InvalidArgument, Unimplemented
from serving.servable import Servable, SignatureDef, TensorSpec, Tensors

DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
MAX_STRING_RANK = 32  # TF converts a string ndarray with a numpy iterator of at most 32 dimensions; past it, a segfault


def predict_signature(servable: Servable, name: str) -> str:
    """The signature a Predict request names (predict_util.cc's lookup; the default when it names none)."""
    name = name or DEFAULT_SIGNATURE
    if name not in servable.signature_defs:
        raise FailedPrecondition(f'Serving signature key "{name}" not found.')
    return name


def signature_inputs(servable: Servable, name: str) -> dict[str, TensorSpec]:
    """The inputs of the signature a REST predict body names, which the body is parsed against
    (http_rest_api_handler.cc's lookup, in its words)."""
    if name not in servable.signature_defs:
        raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
    return servable.inputs[name]


def check_predict_request(servable: Servable, signature: str, inputs: Tensors, output_filter: list[str],
                          check_method: bool) -> None:
    """predict_util.cc's checks of a request for `signature` (as a lookup above found it), in its order: the
    method name; the request's inputs must be exactly the signature's, and strings fewer than 33 dimensions (they
    would crash TF); the filter must name its outputs; each input must have its signature's dtype, then a
    placeholder's rank (the session would crash on another)."""
    sig = servable.signature_defs[signature]
    if check_method and sig.method_name not in (PREDICT, CLASSIFY, REGRESS):
        raise Internal(
            f"Expected prediction signature method_name to be one of {{{PREDICT}, {CLASSIFY}, {REGRESS}}}. "
            f"Was: {sig.method_name}"
        )
    expected, sent = set(sig.inputs), set(inputs)
    if expected != sent and not (sent < expected and sig.defaults):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
            f"Missing but required: {{{','.join(sorted(expected - sent))}}}."
        )
    for name, value in inputs.items():
        if value.dtype.kind in "OSU" and value.ndim > MAX_STRING_RANK:
            raise InvalidArgument(f"input '{name}' is a string tensor of {value.ndim} dimensions; at most "
                                  f"{MAX_STRING_RANK} are supported")
    seen = set()
    for alias in output_filter:
        if alias not in sig.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    _check_dtypes(servable, signature, inputs)
    _check_ranks(servable, signature, inputs)


def example_inputs(servable: Servable, signatures: tuple[str, ...], examples: list[bytes]) -> Tensors:
    """The feed of Classify or Regress `signatures` (as classify_signature or regress_signature decided them; several
    for a MultiInference): the serialized tf.Examples as the one input of each, which must then be a string tensor."""
    inputs = {"inputs": np.array(examples, dtype=object)}
    for signature in signatures:
        _check_dtypes(servable, signature, inputs)
    return inputs


def _check_dtypes(servable: Servable, signature: str, inputs: Tensors) -> None:
    """Each input must have its signature's dtype, refused in the words of TF Serving's session
    (FunctionCallFrame::SetArgs); the one dtype check of a request."""
    specs = servable.inputs[signature]
    for index, alias in enumerate(servable.feed_order[signature]):
        if alias in inputs and not specs[alias].accepts(inputs[alias]):
            raise InvalidArgument(f"Expects arg[{index}] to be {data_type_string(specs[alias].dtype)} but "
                                  f"{data_type_string(inputs[alias].dtype)} is provided")


def _check_ranks(servable: Servable, signature: str, inputs: Tensors) -> None:
    """Each input fed to a placeholder must have its rank (TensorSpec.fed_rank: one the session would crash on)."""
    specs = servable.inputs[signature]
    for alias, value in inputs.items():
        rank = specs[alias].fed_rank
        if rank is not None and value.ndim != rank:
            raise InvalidArgument(f"input '{alias}' has shape {shape_string(value.shape)}, which cannot be fed to "
                                  f"the signature's {shape_string(specs[alias].shape)}: it needs {rank} dimensions, "
                                  f"not {value.ndim}")


def data_type_name(dtype) -> str:
    """TF's DataType_Name: "DT_FLOAT" for float32."""
    return types_pb2.DataType.Name(tf.as_dtype(dtype).as_datatype_enum)


def data_type_string(dtype) -> str:
    """TF's DataTypeString, which its errors use: the DataType's name in lower case ("float", not "float32")."""
    return data_type_name(dtype).removeprefix("DT_").lower()


def filter_outputs(outputs: Tensors, output_filter: list[str]) -> Tensors:
    return {k: outputs[k] for k in output_filter} if output_filter else outputs


def _example_signature(servable: Servable, name: str, method: str, kind: str, check_method: bool) -> SignatureDef:
    """The named signature, after the checks classifier.cc and regressor.cc make before looking at outputs."""
    signature = servable.signature_defs.get(name or DEFAULT_SIGNATURE)
    if signature is None:
        raise InvalidArgument(f"No signature was found with the name: {name or DEFAULT_SIGNATURE}")
    if check_method and signature.method_name != method:
        raise InvalidArgument(f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    return signature


def _check_inputs_named(signature: SignatureDef, kind: str) -> None:
    if "inputs" not in signature.inputs:
        raise InvalidArgument(f"No {kind} inputs found in SignatureDef: {signature}")


def classify_signature(servable: Servable, name: str, check_method: bool) -> str:
    """classifier.cc PreProcessClassification's checks, in its order: method, one input, one or two outputs, the
    input's name, then the outputs' names."""
    signature = _example_signature(servable, name, CLASSIFY, "classification", check_method)
    if len(signature.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    _check_inputs_named(signature, "classification")
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise InvalidArgument(
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {signature}"
        )
    return name or DEFAULT_SIGNATURE


def regress_signature(servable: Servable, name: str, check_method: bool) -> str:
    """regressor.cc PreProcessRegression's checks, in its order: method, one input, one output, their names."""
    signature = _example_signature(servable, name, REGRESS, "regression", check_method)
    if len(signature.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    _check_inputs_named(signature, "regression")
    if "outputs" not in signature.outputs:
        raise InvalidArgument(f"No regression outputs found in SignatureDef: {signature}")
    return name or DEFAULT_SIGNATURE


def multi_inference_tasks(servable: Servable, tasks: list[inference_pb2.InferenceTask],
                          check_method: bool) -> list[tuple[str, str]]:
    """(method name, signature) of each task, checked as multi_inference_helper.cc and multi_inference.cc check
    them, task by task, before the input is read: every task on `servable`'s model, no signature twice, each one
    a classify or regress signature."""
    decided = []
    for task in tasks:
        if not task.model_spec.name:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if task.model_spec.name != servable.name:
            raise InvalidArgument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature in (name for _, name in decided):
            raise InvalidArgument(f"Duplicate evaluation of signature: {signature}")
        if signature not in servable.signature_defs:
            raise InvalidArgument(f"Requested signature not found in model graph: {signature}")
        if task.method_name == CLASSIFY:
            classify_signature(servable, signature, check_method)
        elif task.method_name == REGRESS:
            regress_signature(servable, signature, check_method)
        else:
            raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        decided.append((task.method_name, signature))
    return decided


def classification_result(outputs: Tensors, n_examples: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(classes [n, k] bytes or None, scores [n, k] float32 or None), validated as TF Serving does."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, value, dtype in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise InvalidArgument(f"Expected Tensor shape: [batch_size num_classes] but got {shape_string(value.shape)}")
        if data_type_name(value.dtype) != dtype:
            raise InvalidArgument(f"Expected {name} Tensor of {dtype}. Got: {data_type_name(value.dtype)}")
        if value.shape[0] != n_examples:
            raise InvalidArgument(f"Expected {name} output batch size of {n_examples}. Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    return classes, scores


def regression_result(outputs: Tensors, n_examples: int) -> np.ndarray:
    """[n] float32 values, validated as TF Serving's PostProcessRegressionResult does, in its order."""
    values = outputs["outputs"]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise InvalidArgument("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                              f"{shape_string(values.shape)}")
    if values.shape[0] != n_examples:
        raise InvalidArgument(f"Input batch size did not match output batch size: {n_examples} vs. {values.shape[0]}")
    if values.dtype != np.float32:
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {data_type_name(values.dtype)}")
    return values.reshape(-1)


def serialized_examples(request_input: input_pb2.Input) -> list[bytes]:
    """tf.Example bytes from an Input proto; context features are merged into every example."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise InvalidArgument("Input is empty.")
    return examples
