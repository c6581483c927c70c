"""The SavedModel TF Serving loads: Keras model -> signatures with TF Serving's method names, and warmup.

`serving_default` (predict) takes `x` as the data's kind says: flat float32 rows (numbers), one string
per example (text: the model vectorizes it), or encoded image files (images: decoded and resized here by
pipeline.images, as ingest did for training). Classifiers also get `classify` and regressors `regress`,
which take serialized tf.Example protos with one feature `x` (that is what TF Serving's Classify and
Regress APIs send): numbers as a float_list or an int64_list (TF Serving's REST API turns JSON whole
numbers into int64_list, so `{"x": [0, 5, 13]}` must work like `[0.0, 5.0, 13.0]`), text or image files
as a bytes_list.
With `reject_nonfinite`, NaN or Infinity in `x` fails the request (INVALID_ARGUMENT, naming `x`),
since training never saw such rows and a model answers them with confident nonsense.
Given an explain plan (pipeline.explain), `explain` takes what `serving_default` takes and answers why: each input
value's share of the predicted score, computed in the graph (integrated gradients), so TF Serving answers it too.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from pipeline.artifacts import categorical_features
from pipeline.explain import Plan, attribute

INPUT = "x"  # the feature name in predict requests and in tf.Example features
METHOD_NAMES = {"classify": "tensorflow/serving/classify", "regress": "tensorflow/serving/regress"}
EXPLAIN_FUNCTION = re.compile(r"__inference_explain_\d+")  # the traced _explain_fn, as the saver names it


class UncompiledIsNotAProblem(logging.Filter):
    """Drops tf_keras's "Compiled the loaded model, but the compiled metrics have yet to be built" at save time:
    save() builds the compiled loss and metrics of the model it writes, and on a model loaded without its
    training state (what is served) its bare except logs that line, untrue and printed by every export."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Compiled the loaded model")


def save(model: keras.Model, schema: dict, path: Path, warmup: bool, reject_nonfinite: bool,
         sample: dict[str, np.ndarray], explain: Plan | None = None) -> None:
    """Write `model` as a SavedModel at `path` with TF Serving's signatures (and Keras metadata: warm starts load
    it); `sample` (one row as a client sends it, by input name) is the warmup request; with `explain`, the explain
    signature too."""
    kind = schema.get("kind", "numeric")
    categorical = categorical_features(schema)
    n = len(schema["features"]) - len(categorical)
    pixels = _image_pixels(schema) if kind == "image" else None

    def prepared(inputs: dict) -> tuple:
        """What the model reads of a request: the numbers (checked), decoded pixels or texts, and the categorical
        columns' indices (None without)."""
        x = inputs[INPUT]
        if kind == "numeric":
            x = _checked_width(x, n)
        if reject_nonfinite and kind == "numeric":
            x = tf.debugging.assert_all_finite(x, f"input '{INPUT}' must hold finite numbers, as in training")
        if pixels:
            x = pixels(x)
        if not categorical:
            return x, None
        return x, tf.concat([_category_index(inputs[f["name"]], f["vocabulary"]) for f in categorical], axis=1)

    def run(inputs: dict):
        x, indices = prepared(inputs)
        return model(x if indices is None else tf.concat([x, indices], axis=1), training=False)

    specs = [tf.TensorSpec([None, n], tf.float32, name=INPUT) if kind == "numeric" else
             tf.TensorSpec([None], tf.string, name=INPUT), *(tf.TensorSpec([None], tf.string, name=f["name"])
                                                             for f in categorical)]
    strings = {f["name"]: tf.io.FixedLenFeature([], tf.string) for f in categorical}  # required, as in predict
    if kind != "numeric":  # the text, or the image file
        strings[INPUT] = tf.io.FixedLenFeature([], tf.string)

    def parse(examples) -> dict:
        parsed = tf.io.parse_example(examples, strings) if strings else {}
        return {INPUT: numeric_feature(examples, INPUT, n), **parsed} if kind == "numeric" else parsed

    signatures = {"serving_default": _predict_fn(run, specs, schema["task"], schema.get("classes", []))}
    if explain is not None:
        signatures["explain"] = _explain_fn(model, explain, prepared, specs, schema.get("classes", []))
    if schema["task"] == "classification":
        signatures["classify"] = _classify_fn(run, parse, schema["classes"])
    else:
        signatures["regress"] = _regress_fn(run, parse)
    untrue = UncompiledIsNotAProblem()
    tf.get_logger().addFilter(untrue)
    try:
        model.save(str(path), save_format="tf", signatures=signatures)
    finally:
        tf.get_logger().removeFilter(untrue)
    _amend_saved_model(path)
    if warmup:
        _write_warmup(path, sample, [key for key in ("serving_default", "explain") if key in signatures])


def _checked_width(x, n: int):
    """`x` once the graph has checked that its rows hold `n` numbers: a row of another length is refused in words a
    client can act on (TF Serving answers the failed assertion with a 400, as this server does), not with the
    shape error of whichever layer first meets it."""
    width = tf.shape(x)[1]
    message = tf.strings.format(f"{INPUT} must hold {n} numbers per row, received {{}}", width)  # no quotes: escaped
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(width, n), [message])]):
        return tf.identity(x)


def _category_index(values, vocabulary: list[str]):
    """1 + each string's position in `vocabulary`, 0 when it is not there, as a float32 column: what validate's
    `lookup` computed for training, in plain ops (no lookup-table resource for the SavedModel to track)."""
    matches = tf.equal(values[:, None], tf.constant(vocabulary)[None, :])
    position = tf.cast(tf.argmax(tf.cast(matches, tf.int32), axis=1), tf.float32) + 1
    return tf.where(tf.reduce_any(matches, axis=1), position, 0.0)[:, None]


def _image_pixels(schema: dict):
    """Encoded image files [batch] -> the flat pixel rows the model was trained on."""
    from pipeline.images import decode_and_resize

    height, width, channels = schema["input_shape"]

    def pixels(files):
        decoded = tf.map_fn(lambda f: decode_and_resize(f, (height, width), channels), files,
                            fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
        return tf.reshape(decoded, [-1, height * width * channels])

    return pixels


def _predict_fn(run, specs: list[tf.TensorSpec], task: str, classes: list[str]):
    """Predict's outputs: a classifier's probabilities and class id, and its class name when the labels are names
    (not the ids themselves, as digits' are); a regressor's value."""
    @tf.function(input_signature=specs)
    def predict(*inputs):
        y = run({spec.name: value for spec, value in zip(specs, inputs)})
        if task != "classification":
            return {"value": tf.squeeze(y, axis=-1)}
        class_id = tf.argmax(y, axis=-1)
        return {"probabilities": y, "class_id": class_id, **_class_name(class_id, classes)}

    return predict


def _explain_fn(model: keras.Model, plan: Plan, prepared, specs: list[tf.TensorSpec], classes: list[str]):
    """Explain's outputs (pipeline.explain.attribute), and the explained class's name as predict gives it."""
    @tf.function(input_signature=specs, autograph=False)
    def explain(*inputs):
        outputs = attribute(model, plan, *prepared({spec.name: value for spec, value in zip(specs, inputs)}))
        return {**outputs, **(_class_name(outputs["class_id"], classes) if "class_id" in outputs else {})}

    return explain


def _class_name(class_id, classes: list[str]) -> dict:
    """{"class_name": ...} when the labels are names, not the ids themselves (as digits' are); {} otherwise."""
    if classes == [str(i) for i in range(len(classes))]:
        return {}
    return {"class_name": tf.gather(tf.constant(classes), class_id)}


def _classify_fn(run, parse, classes: list[str]):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs):
        scores = run(parse(inputs))
        names = tf.broadcast_to(tf.constant(classes), tf.shape(scores))
        return {"classes": names, "scores": scores}

    return classify


def _regress_fn(run, parse):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress(inputs):
        return {"outputs": tf.squeeze(run(parse(inputs)), axis=-1)}

    return regress


def _decode(buffers, message: str, fields: list[str], types: list):
    """tf.io.decode_proto, also on no buffers at all (which it refuses): one blank message is added, then dropped."""
    sizes, values = tf.io.decode_proto(tf.concat([buffers, [b""]], 0), message, fields, types)
    return sizes[:-1], [v[:-1] for v in values]


def _first(values):
    """Column 0 of a decode_proto output for a singular message field: its value, or b"" where absent."""
    return tf.pad(values, [[0, 0], [0, 1]])[:, 0]


def numeric_feature(serialized, name: str, n: int):
    """Feature `name` of each serialized tf.Example as float32 [batch, n], from a float_list or an
    int64_list (clients that send whole numbers get int64_list, as from TF Serving's REST API)."""
    batch = tf.shape(serialized)[0]
    _, (features,) = _decode(serialized, "tensorflow.Example", ["features"], [tf.string])
    sizes, (entries,) = _decode(_first(features), "tensorflow.Features", ["feature"], [tf.string])
    present = tf.sequence_mask(sizes[:, 0], tf.shape(entries)[1])
    owner = tf.boolean_mask(tf.broadcast_to(tf.range(batch)[:, None], tf.shape(entries)), present)
    _, (keys, values) = _decode(tf.boolean_mask(entries, present), "tensorflow.Features.FeatureEntry",
                                ["key", "value"], [tf.string, tf.string])
    mine = tf.equal(_first(keys), name)
    found = tf.math.unsorted_segment_sum(tf.cast(mine, tf.int32), owner, batch)
    kinds, (floats, ints) = _decode(_first(tf.boolean_mask(values, mine)), "tensorflow.Feature",
                                    ["float_list", "int64_list"], [tf.string, tf.string])
    float_counts, (float_values,) = _decode(_first(floats), "tensorflow.FloatList", ["value"], [tf.float32])
    int_counts, (int_values,) = _decode(_first(ints), "tensorflow.Int64List", ["value"], [tf.int64])
    has_floats = kinds[:, 0] > 0
    counts = tf.where(has_floats, float_counts[:, 0], int_counts[:, 0])
    checks = [
        tf.debugging.assert_equal(found, 1, message=f"Feature: {name} (a list of {n} numbers) is required but could "
                                                    f"not be found in every example."),
        tf.debugging.assert_equal(counts, n, message=f"Feature: {name} must hold {n} numbers (a float_list or an "
                                                     f"int64_list) in every example."),
    ]
    with tf.control_dependencies(checks):
        def columns(t):
            return tf.pad(t, [[0, 0], [0, n - tf.shape(t)[1]]])
        return tf.where(has_floats[:, None], columns(float_values), tf.cast(columns(int_values), tf.float32))


def _amend_saved_model(path: Path) -> None:
    """What TF2's saver leaves to do, in one rewrite of saved_model.pb: it marks every signature as predict, and TF
    Serving's Classify/Regress check the method name; the explain function loses the nodes that never run
    (_without_unused_nodes)."""
    pb = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta_graph in saved.meta_graphs:
        for key, method in METHOD_NAMES.items():
            if key in meta_graph.signature_def:
                meta_graph.signature_def[key].method_name = method
        for function in meta_graph.graph_def.library.function:
            if EXPLAIN_FUNCTION.fullmatch(function.signature.name):
                _without_unused_nodes(function)
    pb.write_bytes(saved.SerializeToString())


def _without_unused_nodes(function) -> None:
    """Drop the nodes of a FunctionDef that no output or control output depends on, and the shape hints of those
    kept (`_output_shapes`: TF infers shapes when it loads a function). A gradient tape's backward pass makes every
    input's gradient of each op it goes through (a convolution's filter gradient, a bias's), and explain fetches
    only the inputs': TF prunes the others at each call. Stored, the two were 7 of the 29 KB explain added to the
    digits SavedModel (benchmarks/results/explain.md)."""
    nodes = {node.name: node for node in function.node_def}
    needed, pending = set(), [*function.ret.values(), *function.control_ret.values()]
    while pending:
        name = pending.pop().lstrip("^").split(":")[0]
        if name in nodes and name not in needed:
            needed.add(name)
            pending.extend(nodes[name].input)
    kept = [node for node in function.node_def if node.name in needed]
    for node in kept:
        node.attr.pop("_output_shapes", None)
    del function.node_def[:]
    function.node_def.extend(kept)


def _write_warmup(path: Path, inputs: dict[str, np.ndarray], signature_names: list[str]) -> None:
    """One predict request per signature (serving_default, and explain where there is one) in TF Serving's warmup
    format, so the first real request to either is not slow."""
    (path / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for signature_name in signature_names:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
