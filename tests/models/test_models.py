"""Every builder in MODELS builds a model that takes flat rows and gives the right outputs."""
import numpy as np
import pytest

from models import MODELS, DataSpec, ModelConfig, build_model
from pipeline.config import load_config


def spec(shape, task="classification", n_outputs=10):
    n = int(np.prod(shape))
    return DataSpec(n, tuple(shape), task, n_outputs, np.full(n, 2.0, np.float32), np.full(n, 4.0, np.float32))


@pytest.mark.parametrize("name, shape", [("cnn", (8, 8, 1)), ("mlp", (64,)), ("rnn", (8, 8))])
def test_builders_give_probabilities_per_row(name, shape):
    model = build_model(ModelConfig(name=name, width=8, depth=2), spec(shape))
    out = model(np.random.rand(5, int(np.prod(shape))).astype(np.float32)).numpy()
    assert out.shape == (5, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_regression_head_is_one_value_and_gru_cell_is_used():
    model = build_model(ModelConfig(name="rnn", cell="gru", width=4, depth=1), spec((6, 2), "regression", 1))
    assert model(np.zeros((3, 12), np.float32)).shape == (3, 1)
    assert any(layer.__class__.__name__ == "GRU" for layer in model.layers)


def test_inputs_are_standardised_inside_the_model():
    model = build_model(ModelConfig(name="mlp"), spec((64,)))
    normalization = model.layers[1]
    np.testing.assert_allclose(normalization(np.full((1, 64), 4.0, np.float32)).numpy(), 1.0)


def test_every_built_in_name_is_a_valid_model_name_with_a_builder():
    from models import user

    assert all(callable(user.load(ref)) for ref in MODELS.values())
    shapes = {"cnn": "[8, 8, 1]", "mlp": "[64]", "rnn": "[8, 8]", "recommender": "[64]"}
    assert all(load_config(None, [f"model.name={name}", f"data.input_shape={shapes[name]}"]).model.name == name
               for name in MODELS)


@pytest.mark.parametrize("name, shape, needed", [("cnn", (64,), "images"), ("rnn", (8, 8, 1), "sequences")])
def test_wrong_input_shape_is_explained(name, shape, needed):
    with pytest.raises(ValueError, match=f"model '{name}' needs {needed}"):
        build_model(ModelConfig(name=name), spec(shape))


def test_the_recommender_embeds_each_categorical_column_and_their_affinity():
    numeric = spec((1,))
    two_tables = DataSpec(3, (3,), "classification", 2, numeric.mean, numeric.variance, categories=(20, 500))
    model = build_model(ModelConfig(name="recommender", width=4, depth=1), two_tables)
    tables = [layer.embeddings.shape.as_list() for layer in model.layers if layer.__class__.__name__ == "Embedding"]
    assert tables == [[21, 4], [501, 4]] and model.get_layer("affinity") is not None
    rows = np.array([[1.5, 3, 499], [0.0, 0, 0]], np.float32)  # index 0: a value out of the vocabulary
    np.testing.assert_allclose(model(rows).numpy().sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="model 'recommender' embeds categorical columns"):
        build_model(ModelConfig(name="recommender"), spec((64,)))
