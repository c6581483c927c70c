"""The compress stage on digits with tiny fine-tuning: every variant, measured honestly, a gate."""
import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import tf_keras as keras

from models import DataSpec, ModelConfig, build_model
from pipeline.compression import VARIANTS, tflite
from pipeline.compression import variants as tfmot_variants
from pipeline.config import ConfigError, load_config, stage_view
from pipeline.errors import StageError
from pipeline.runner import Runner
from pipeline.stages import compress

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained by the pipeline itself, and the stage inputs compress reads."""
    root = tmp_path_factory.mktemp("compress")
    cfg = load_config(None, [f"output_dir={root / 'runs'}", "train.epochs=8", "train.verbose=0"])
    Runner(cfg).run("evaluate", log=lambda _: None)
    run = root / "runs" / "latest"
    return cfg, {"model": run / "train" / "model", "dataset": run / "validate" / "dataset",
                 "schema": run / "validate" / "schema"}


def run_compress(trained, tmp_path, **overrides):
    cfg, inputs = trained
    settings = dict(variants=VARIANTS, tflite=("float", "int8"), fine_tune_epochs=3, student_width=8,
                    distill_epochs=8, max_accuracy_drop=0.1)  # few epochs: the gate's logic, not the accuracy, is tested
    view = stage_view(replace(cfg, compress=compress.Config(**{**settings, **overrides})), compress)
    out = tmp_path / "out"
    out.mkdir()
    metrics = compress.run(view, inputs, out)
    return metrics, json.loads((out / "report.json").read_text()), out


def test_every_variant_is_produced_measured_and_the_smallest_within_the_gate_selected(trained, tmp_path):
    metrics, report, out = run_compress(trained, tmp_path)
    variants = report["variants"]
    assert report["baseline"] == "baseline"
    for name in ("baseline", *VARIANTS):
        assert variants[name]["format"] == "keras" and variants[name]["savedmodel_gzip_bytes"] > 0
    for name in ("baseline+float", "baseline+int8", "pruned+int8", "qat+int8", "pqat+int8", "cluster+int8",
                 "distilled+int8"):
        entry = variants[name]
        assert entry["format"] == "tflite" and entry["tflite_gzip_bytes"] < entry["tflite_bytes"]
        for key in ("accuracy", "sparsity", "params", "latency_ms_b1", "latency_ms_b32"):
            assert key in entry
    assert abs(variants["pruned"]["sparsity"] - 0.8) <= 0.02
    assert all(abs(s - 0.8) <= 0.02 for s in variants["pruned"]["sparsity_by_layer"].values())
    assert abs(variants["pqat"]["sparsity"] - 0.8) <= 0.02, "pruning-preserving QAT must keep the zeros"
    assert variants["distilled"]["params"] < variants["baseline"]["params"] / 4
    assert variants["baseline+int8"]["agreement_with_baseline"] >= 0.95
    assert variants["baseline+int8"]["tflite_bytes"] < variants["baseline+float"]["tflite_bytes"] / 3
    selected = report["selected"]
    assert variants[selected]["format"] == "keras" and selected != "baseline"
    assert variants[selected]["accuracy_drop"] <= 0.1
    within = [n for n, v in variants.items() if v["format"] == "keras" and n != "baseline"
              and v["accuracy_drop"] <= 0.1]
    assert variants[selected]["savedmodel_gzip_bytes"] == min(variants[n]["savedmodel_gzip_bytes"] for n in within)
    assert metrics["selected"] == selected
    assert (out / "compressed" / "model.keras").is_file()
    assert sorted(p.name for p in (out / "compressed" / "tflite").iterdir()) == \
        [f"{selected}+float.tflite", f"{selected}+int8.tflite"]
    assert (out / "compression.png").stat().st_size > 1000


def test_int8_tflite_runs_in_litert_and_agrees_with_the_float_model(trained):
    cfg, inputs = trained
    model = keras.models.load_model(inputs["model"] / "model.keras")
    train = np.load(inputs["dataset"] / "train.npz")
    test = np.load(inputs["dataset"] / "test.npz")
    int8 = tflite.to_tflite(model, "int8", train["x"][:100])
    agree = (tflite.tflite_predictions(int8, test["x"]).argmax(1) ==
             model.predict(test["x"], verbose=0).argmax(1)).mean()
    assert agree >= 0.95


def test_the_gate_fails_with_the_table_when_no_variant_qualifies(trained, tmp_path):
    with pytest.raises(StageError, match=r"no compressed variant is within compress.max_accuracy_drop=-1.0(.|\n)*pruned"):
        run_compress(trained, tmp_path, variants=("pruned",), tflite=("int8",), max_accuracy_drop=-1.0)


def test_unsupported_layers_are_named_and_a_model_with_none_supported_is_refused():
    spec = DataSpec(12, (6, 2), "classification", 3, np.zeros(12, np.float32), np.ones(12, np.float32))
    rnn = build_model(ModelConfig(name="rnn", width=4, depth=1), spec)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tfmot_variants.quantize_aware(rnn)
    assert any("lstm" in str(w.message) and "(LSTM)" in str(w.message) for w in caught)
    inputs = keras.Input((4,))
    only_normalization = keras.Model(inputs, keras.layers.Normalization(mean=0.0, variance=1.0)(inputs))
    with pytest.raises(tfmot_variants.NothingToCompress, match="has no layer it can handle; it handles Dense, Conv2D"):
        tfmot_variants.prune(only_normalization, 0.5, steps=10)


def test_representative_rows_of_the_wrong_shape_are_explained():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match=r"representative rows shaped \[n, 4\].*received \[10, 3\]"):
        tflite.to_tflite(model, "int8", np.zeros((10, 3), np.float32))


def test_bad_compress_config_names_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["compress.variants=[pruned, squeezed]", "compress.target_sparsity=1.5",
                           "compress.tflite=[int4]", "compress.select=tiniest"])
    message = str(info.value)
    assert "compress.variants: unknown variant 'squeezed'" in message
    assert "compress.target_sparsity: expected a number in (0, 1), received 1.5." in message
    assert "compress.tflite: unknown kind 'int4'" in message
    assert "compress.select: expected smallest_within" in message
