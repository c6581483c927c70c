"""A user's builder named in model.name (models.user): found, called with the config and the data's
shape, and every way it can go wrong reported with what was expected."""
import sys
import textwrap

import numpy as np
import pytest

from models import ModelConfig, build_model, model_code_files
from models.user import UserCodeError, reference_problem
from pipeline.config import ConfigError, load_config
from tests.models.test_models import spec

FUNCTIONAL = """
import tf_keras as keras
from models.layers import normalized_input, output_head

def build(cfg, spec):
    inputs, x = normalized_input(spec)
    x = keras.layers.Dense(cfg.width, activation="relu")(keras.layers.Flatten()(x))
    return keras.Model(inputs, output_head(spec, x), name="mine")
"""


def write(tmp_path, source: str, name: str = "mybuilders.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_a_file_builder_gets_the_config_and_the_data_spec(tmp_path):
    path = write(tmp_path, FUNCTIONAL)
    model = build_model(ModelConfig(name=f"{path}:build", width=5), spec((64,)))
    assert model.name == "mine" and model.layers[-2].units == 5
    assert model(np.zeros((2, 64), np.float32)).shape == (2, 10)
    assert model_code_files(f"{path}:build") == [path]


def test_a_module_builder_is_imported_from_the_python_path(tmp_path, monkeypatch):
    write(tmp_path, FUNCTIONAL, "team_models.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(name="team_models:build", width=3), spec((64,)))
    assert model.name == "mine"
    assert model_code_files("team_models:build") == [tmp_path / "team_models.py"]
    assert model_code_files("cnn") == []


def test_the_example_subclassed_model_is_built_by_calling_it_on_the_schema_shape():
    model = build_model(ModelConfig(name="examples.custom_model:build", width=4), spec((8, 8, 1)))
    assert model.built and type(model).__name__ == "SmallConvNet"
    assert model(np.zeros((3, 64), np.float32)).shape == (3, 10)


def test_a_module_that_is_not_on_the_path_names_the_module_and_the_path():
    problem = reference_problem("no_such_package.models:build")
    assert "cannot import module 'no_such_package.models'" in problem
    assert str(sys.path[1]) in problem and "path/to/no_such_package/models.py:build" in problem


@pytest.mark.parametrize("name, message", [
    ("models.py:2nd", "expected 'package.module:function' or 'path/to/file.py:function', received 'models.py:2nd'"),
    ("missing_dir/net.py:build", "no such file"),
    ("resnet", "expected one of 'cnn', 'mlp', 'rnn', 'recommender' or a builder of yours as 'package.module:function'"),
])
def test_bad_model_names_are_config_errors(name, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"model.name={name}"])
    assert message in str(caught.value)


def test_a_missing_function_lists_what_the_module_defines(tmp_path):
    path = write(tmp_path, FUNCTIONAL)
    with pytest.raises(UserCodeError, match=r"has no function 'make'; it defines \['build'"):
        build_model(ModelConfig(name=f"{path}:make"), spec((64,)))


def test_a_builder_that_raises_shows_the_users_traceback_and_the_signature(tmp_path):
    path = write(tmp_path, """
        def build(cfg, spec):
            layers = cfg.width // 0
    """)
    with pytest.raises(UserCodeError) as caught:
        build_model(ModelConfig(name=f"{path}:build"), spec((64,)))
    message = str(caught.value)
    assert "raised ZeroDivisionError: integer division or modulo by zero" in message
    assert f'File "{path}", line 3, in build' in message and "layers = cfg.width // 0" in message
    assert "build(cfg: models.ModelConfig, spec: models.DataSpec) -> tf_keras.Model" in message


def test_a_builder_that_returns_something_else_says_what_it_returned(tmp_path):
    path = write(tmp_path, "def build(cfg, spec):\n    return [1, 2]\n")
    with pytest.raises(UserCodeError, match=r"returned a builtins.list, not a tf_keras.Model"):
        build_model(ModelConfig(name=f"{path}:build"), spec((64,)))


def test_a_module_that_fails_to_import_says_so(tmp_path):
    path = write(tmp_path, "import tensorflow_nonexistent\n")
    with pytest.raises(UserCodeError, match=r"importing .* failed with ModuleNotFoundError"):
        build_model(ModelConfig(name=f"{path}:build"), spec((64,)))


def test_a_subclassed_model_later_stages_cannot_reload_is_refused_before_training(tmp_path):
    path = write(tmp_path, """
        import tf_keras as keras

        class Net(keras.Model):
            def __init__(self, n, extra):
                super().__init__()
                self.extra = extra
                self.out = keras.layers.Dense(n)

            def call(self, x):
                return self.out(x)

        def build(cfg, spec):
            return Net(spec.n_outputs, object())
    """)
    with pytest.raises(UserCodeError) as caught:
        build_model(ModelConfig(name=f"{path}:build"), spec((64,)))
    message = str(caught.value)
    assert "subclassed model Net" in message and "register_keras_serializable(package=...) (missing)" in message
    assert "get_config() returning its __init__ arguments (missing)" in message


def test_the_users_files_are_in_the_cache_key_of_every_stage_that_runs_their_code():
    from pipeline.runner import stage_view
    from pipeline.stages import compress, evaluate, export, train, tune

    cfg = load_config("custom_model")
    expected = model_code_files("examples.custom_model:build")
    assert expected and expected[0].name == "custom_model.py"
    for stage in (tune, train, evaluate, compress, export):
        assert set(expected) <= set(stage.external_inputs(stage_view(cfg, stage))), stage.__name__


def test_compression_says_which_variants_a_users_model_cannot_take():
    import tf_keras as keras

    from pipeline.compression.variants import unsupported

    rows = np.zeros((4, 64), np.float32)
    subclassed = build_model(ModelConfig(name="examples.custom_model:build", width=4), spec((8, 8, 1)))
    reasons = unsupported(("pruned", "qat", "cluster", "distilled"), subclassed, 4, rows)
    assert set(reasons) == {"pruned", "qat", "cluster"}
    assert "SmallConvNet is a subclassed model" in reasons["pruned"]

    class Scale(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inputs = keras.Input((64,))
    functional = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(Scale(name="scale")(inputs)))
    reasons = unsupported(("pruned", "qat"), functional, 4, rows)
    assert "pruned" not in reasons  # pruning wraps the layers it knows and leaves the others
    assert "TFMOT cannot wrap a layer of this model" in reasons["qat"] and "Scale" in reasons["qat"]
