"""Config loading: overrides with type conversion, and every problem reported at once."""
import pytest

from pipeline.config import ConfigError, all_keys, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_default_config_loads_with_the_keys_scripts_rely_on():
    cfg = load_config()
    assert cfg.data.source == "digits"
    for key in ("output_dir", "data.source", "model.name", "train.epochs", "train.batch_size",
                "train.strategy", "push.repository", "push.model_name"):
        assert key in all_keys()


def test_overrides_are_converted_to_the_field_types():
    cfg = load_config(None, ["train.epochs=3", "train.learning_rate=1e-2", "model.name=mlp",
                             "data.input_shape=[64]", "evaluate.max_mae=null", "export.warmup=false"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.train.learning_rate == 0.01
    assert cfg.model.name == "mlp"
    assert cfg.data.input_shape == (64,)
    assert cfg.evaluate.max_mae is None
    assert cfg.export.warmup is False


def test_an_int_is_accepted_where_a_float_is_expected():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


def test_all_problems_are_reported_together_with_suggestions(tmp_path):
    path = write(tmp_path, "train:\n  epoch: 3\n  batch_size: 64k\nmodel:\n  name: cnnn\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["train.strategy=mirorred", "trian.epochs=2"])
    message = str(info.value)
    assert f"Config error in {path} and the command line (5 problems):" in message
    assert "train.epoch: unknown key. Did you mean 'train.epochs'?" in message
    assert "train.batch_size: expected an integer, received '64k'." in message
    assert "model.name: expected one of 'cnn', 'mlp', 'rnn', 'recommender' (did you mean 'cnn'?) or a builder of yours as " in message
    assert "train.strategy: expected one of 'default', 'mirrored', 'multi_worker', 'parameter_server' (did you mean 'mirrored'?)" in message
    assert "trian: unknown key. Did you mean 'train'?" in message


def test_range_problems_name_the_key_and_the_value():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs=0", "model.dropout=1.5", "data.val_fraction=0.9",
                           "push.model_name=../evil", "data.source=missing.csv"])
    message = str(info.value)
    assert "train.epochs: expected a positive integer, received 0." in message
    assert "model.dropout: expected a number in [0, 1), received 1.5." in message
    assert "data.val_fraction: expected a number in (0, 0.5), received 0.9." in message
    assert "push.model_name: expected letters, digits" in message
    assert "data.source: no such file" in message and "missing.csv" in message


def test_booleans_are_not_integers():
    with pytest.raises(ConfigError, match=r"train.epochs: expected an integer, received True"):
        load_config(None, ["train.epochs=true"])


def test_an_override_without_equals_or_into_a_value_is_explained():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs", "seed.x=1"])
    assert "'train.epochs': an override must look like key.sub=value" in str(info.value)
    assert "seed.x: 'seed' is a value, not a section" in str(info.value)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [unclosed"))
    with pytest.raises(ConfigError, match="expected a section"):
        load_config(write(tmp_path, "train: 5\n"))


def test_config_names_resolve_to_bundled_files():
    assert load_config("digits").model.name == "cnn"


def test_checking_a_config_imports_no_tensorflow(tmp_path):
    """`--help`, `--list` and config errors answer in well under a second: TensorFlow loads when a stage runs."""
    import subprocess
    import sys

    code = ("import sys, pipeline.cli; from pipeline.config import load_config; from pipeline.stages import STAGES; "
            "from pipeline.runner import Runner, code_fingerprint; "
            f"Runner(load_config(None, ['output_dir={tmp_path}'])).plan(); [code_fingerprint(s) for s in STAGES.values()]; "
            "print(sorted({'tensorflow', 'tf_keras', 'keras_tuner'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_model_name_comes_from_the_data_unless_set(tmp_path):
    (tmp_path / "my data (v2).csv").write_text("a,label\n1,2\n")
    (tmp_path / "bc.csv").write_text("a,label\n1,2\n")
    assert load_config().push.model_name == "digits"
    assert load_config(None, [f"data.source={tmp_path / 'bc.csv'}"]).push.model_name == "bc"
    assert load_config(None, [f"data.source={tmp_path / 'my data (v2).csv'}"]).push.model_name == "my-data-v2"
    assert load_config(None, [f"data.source={tmp_path / 'bc.csv'}", "push.model_name=cancer"]).push.model_name == "cancer"


def test_errors_name_where_they_come_from_and_how_to_fix_them(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.optimizer=sgd", "compress.variants=pruned,qat"])
    message = str(info.value)
    assert message.startswith("Config error in the command line (2 problems):")  # not digits.yaml
    assert "train.optimizer: unknown key. Valid keys in 'train': epochs," in message  # no 'train.step' guess
    assert "compress.variants: expected a list of str in brackets, e.g. [pruned, qat], received 'pruned,qat'." in message
    csv = tmp_path / "rows.csv"
    csv.write_text("a,label\n1,2\n")
    with pytest.raises(ConfigError, match="model.name: model 'cnn' needs images: data.input_shape \\[height, width, "
                                          "channels\\], received \\['features'\\]. Use model.name=mlp"):
        load_config(None, [f"data.source={csv}", "data.input_shape=[]"])  # found before any stage runs
    with pytest.raises(ConfigError, match="model 'rnn' needs sequences"):
        load_config(None, ["model.name=rnn"])
    assert load_config(None, ["model.name=rnn", "data.input_shape=[8, 8]"]).model.name == "rnn"


@pytest.mark.parametrize("steps", [1, 1025])
def test_explain_steps_out_of_range_is_a_config_error(steps):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"export.explain_steps={steps}"])
    assert (f"export.explain_steps: expected an integer in [2, 1024] (32 is the default; fewer steps share the score "
            f"out less exactly, more cost time per request), received {steps}.") in str(info.value)
    assert load_config(None, ["export.explain_steps=2", "export.explain=false"]).export.explain_steps == 2
