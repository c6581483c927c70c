"""pipeline.explain on models built here, in a second: each categorical column's share comes from its own
embedding, and a model with an input integrated gradients cannot attribute to is exported without the explain
signature, saying which input and why (the pipeline's models are checked end to end in tests/integration)."""
import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import DataSpec, ModelConfig, build_model
from pipeline import explain
from pipeline.artifacts import Inputs, RunInfo
from pipeline.config import load_config
from pipeline.runner import stage_view
from pipeline.stages import export

TABLE = {"task": "classification", "input_shape": [], "classes": ["a", "b"],
         "features": [{"name": "size", "mean": 0.0, "std": 1.0},
                      {"name": "user", "dtype": "category", "vocabulary": list("abcde")},
                      {"name": "item", "dtype": "category", "vocabulary": list("abcdefg")}]}


def table_rows(n: int) -> np.ndarray:
    """Rows as the model takes them: a number, then the user's and the item's index (0: out of the vocabulary)."""
    rng = np.random.default_rng(0)
    return np.stack([rng.normal(size=n), rng.integers(0, 6, n), rng.integers(0, 8, n)], axis=1).astype(np.float32)


@keras.saving.register_keras_serializable(package="tests")
class Rounded(keras.layers.Layer):
    """Rounds its input: no gradient flows through it."""

    def call(self, inputs):
        return tf.round(inputs)


def test_each_categorical_column_gets_its_own_embeddings_share():
    keras.utils.set_random_seed(0)
    spec = DataSpec(3, (3,), "classification", 2, np.zeros(3, np.float32), np.ones(3, np.float32), categories=(5, 7))
    model = build_model(ModelConfig(name="recommender", width=4, depth=1), spec)
    items = next(layer for layer in model.layers if isinstance(layer, keras.layers.Embedding) and layer.input_dim == 8)
    items.set_weights([np.full((8, 4), 0.3, np.float32)])  # every item embedded alike: the item tells nothing
    rows = table_rows(200)
    plan = explain.plan(model, TABLE, rows, 32)
    answer = {k: v.numpy() for k, v in explain.attribute(model, plan, tf.constant(rows[:32, :1]),
                                                         tf.constant(rows[:32, 1:])).items()}
    assert sorted(answer) == ["attributions", "attributions_item", "attributions_user", "baseline_score", "class_id",
                              "score"]
    assert np.abs(answer["attributions_item"]).max() < 1e-6 < 1e-3 < np.abs(answer["attributions_user"]).max()
    total = answer["attributions"].sum(axis=1) + answer["attributions_user"] + answer["attributions_item"]
    np.testing.assert_allclose(total, answer["score"] - answer["baseline_score"], atol=1e-3)  # an untrained model:
    # scores move little from the baseline


def test_a_categorical_column_read_as_a_number_is_named():
    inputs = keras.Input(shape=(3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    with pytest.raises(explain.NotExplainable, match=r"^input 'user' \(a categorical column\) reaches the model "
                                                     r"through no Embedding layer of its own; integrated gradients"):
        explain.plan(model, TABLE, table_rows(8), 32)


@pytest.mark.slow  # a whole export: 5 s
def test_an_input_without_a_gradient_leaves_the_export_without_explain_and_says_why(tmp_path, capsys):
    inputs = keras.Input(shape=(3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(Rounded()(inputs)))
    schema = {"task": "classification", "kind": "numeric", "input_shape": [3], "classes": ["a", "b"],
              "features": [{"name": f"f{i}", "mean": 0.0, "std": 1.0} for i in range(3)]}
    for name in ("compressed/tflite", "schema", "dataset"):  # the artefacts export reads, as compress and validate
        (tmp_path / name).mkdir(parents=True)                # leave them
    model.save(tmp_path / "compressed" / "model.keras")
    (tmp_path / "schema" / "schema.json").write_text(json.dumps(schema))
    for split in ("train", "test"):
        np.savez(tmp_path / "dataset" / f"{split}.npz", x=np.ones((4, 3), np.float32), y=np.array([0, 1, 0, 1]))
    out = tmp_path / "out"
    out.mkdir()
    artefacts = {name: tmp_path / name for name in ("compressed", "schema", "dataset")}
    metrics = export.run(stage_view(load_config(), export), Inputs(artefacts, RunInfo("test", {})), out)
    reason = ("input 'x': the model's output has no gradient with respect to it (an integer cast, a rounding or a "
              "lookup in the model cuts the path), so integrated gradients cannot give it a share; the model is "
              "exported without the explain signature.")
    assert f"export: no explain signature: {reason}" in capsys.readouterr().out
    assert sorted(metrics["signatures"]) == ["classify", "serving_default"]
    shipped = out / "saved_model" / "assets.extra" / "explain.json"
    assert json.loads(shipped.read_text()) == {"skipped": reason} == json.loads((out / "explanations.json").read_text())


def test_a_subclassed_model_with_categorical_columns_is_named():
    class Scorer(keras.Model):
        def call(self, x):
            return tf.nn.softmax(tf.stack([x[:, 0], x[:, 1]], axis=1))

    with pytest.raises(explain.NotExplainable, match=r"categorical input\(s\) \['user', 'item'\]: integrated gradients "
                                                     r"run over its embeddings.*not a functional model"):
        explain.plan(Scorer(), TABLE, table_rows(8), 32)


def test_the_saved_explain_function_keeps_only_what_its_outputs_need(tmp_path):
    """The tape's backward pass also makes the filter's and the bias's gradients, which explain never fetches:
    the SavedModel stores neither them nor shape hints, and the signature still answers what attribute computes."""
    from tensorflow.core.protobuf import saved_model_pb2

    from pipeline import saved_model

    keras.utils.set_random_seed(0)
    schema = {"task": "classification", "input_shape": [4, 4, 1], "classes": ["0", "1"],
              "features": [{"name": f"p{i}", "mean": 0.0, "std": 1.0} for i in range(16)]}
    inputs = keras.Input(shape=(16,), name="x")
    hidden = keras.layers.Conv2D(2, 3, activation="relu")(keras.layers.Reshape((4, 4, 1))(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(hidden)))
    rows = np.random.default_rng(0).random((8, 16), dtype=np.float32)
    plan = explain.plan(model, schema, rows, 8)
    saved_model.save(model, schema, tmp_path / "1", False, True, {"x": rows[:1]}, plan)

    saved = saved_model_pb2.SavedModel.FromString((tmp_path / "1" / "saved_model.pb").read_bytes())
    explain_fn, = [f for f in saved.meta_graphs[0].graph_def.library.function
                   if saved_model.EXPLAIN_FUNCTION.fullmatch(f.signature.name)]
    ops = {node.op for node in explain_fn.node_def}
    assert "Conv2DBackpropInput" in ops and not ops & {"Conv2DBackpropFilter", "BiasAddGrad"}
    assert not [node.name for node in explain_fn.node_def if "_output_shapes" in node.attr]
    served = tf.saved_model.load(str(tmp_path / "1")).signatures["explain"](x=tf.constant(rows))
    expected = explain.attribute(model, plan, tf.constant(rows), None)
    for name in ("attributions", "score", "baseline_score"):
        np.testing.assert_allclose(served[name].numpy(), expected[name].numpy(), rtol=1e-5, atol=1e-7, err_msg=name)
