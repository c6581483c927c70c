"""The compress stage on digits with tiny fine-tuning: every variant, measured honestly, a gate."""
import json
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import repository

from models import DataSpec, ModelConfig, build_model
from pipeline.artifacts import TRAINED_MODEL, Inputs, RunInfo, data_spec, read_schema, read_split
from pipeline.compression import tflite
from pipeline.compression import variants as tfmot_variants
from pipeline.config import ConfigError, load_config
from pipeline.errors import StageError
from pipeline.progress import SilentReporter
from pipeline.runner import Runner, stage_view
from pipeline.specs import VARIANTS, CompressConfig
from pipeline.stages import compress, evaluate, export
from pipeline.stages import train as train_stage
from serving.client import RestClient
from serving.process import ServerProcess
from tests.serving.repo_files import write_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_compress")]  # module fixture: once, on one worker


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits CNN trained by the pipeline itself, and the stage inputs compress reads."""
    root = tmp_path_factory.mktemp("compress")
    cfg = load_config(None, [f"output_dir={root / 'runs'}", "train.epochs=8", "train.verbose=0"])
    Runner(cfg).run("evaluate", reporter=SilentReporter())
    run = root / "runs" / "latest"
    return cfg, Inputs({"model": run / "train" / "model", "dataset": run / "validate" / "dataset",
                        "schema": run / "validate" / "schema"}, RunInfo("test", {}))


def run_compress(trained, tmp_path, **overrides):
    cfg, inputs = trained
    settings = dict(variants=VARIANTS, tflite=("float", "int8"), fine_tune_epochs=3, student_width=8, distill_epochs=8,
                    distill_tries=1, max_accuracy_drop=0.1)  # few epochs: the gate's logic, not the accuracy, is tested
    view = stage_view(replace(cfg, compress=CompressConfig(**{**settings, **overrides})), compress)
    out = tmp_path / "out"
    out.mkdir(parents=True)
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
    by_layer = variants["pruned"]["sparsity_by_layer"]
    dense = tfmot_variants.unpruned(keras.models.load_model(TRAINED_MODEL.in_artefact(trained[1]["model"])))
    assert len(dense) == 2 and all(by_layer[name] == 0 for name in dense), "the first and last layers stay dense"
    assert all(abs(s - 0.8) <= 0.02 for name, s in by_layer.items() if name not in dense)
    assert 0.5 < variants["pruned"]["sparsity"] < 0.8  # of all kernel weights, the dense ends included
    assert variants["pqat"]["sparsity"] == pytest.approx(variants["pruned"]["sparsity"], abs=0.01), \
        "pruning-preserving QAT must keep the zeros"
    for name, entry in variants.items():  # each drop measured on the same rows as the trained model, with its interval
        low, high = entry["drop_interval"]
        assert low <= entry["accuracy_drop"] <= high, name
        assert entry["accuracy_drop"] == pytest.approx((entry["rows_lost"] - entry["rows_gained"]) / report["rows"])
    assert report["rows"] == len(read_split(trained[1]["dataset"], "val").y)
    passing_int8 = [n for n, v in variants.items() if n.endswith("+int8") and v["status"] == "ok"]
    smallest = report["smallest_int8_within"]
    assert smallest["name"] == min(passing_int8, key=lambda n: variants[n]["tflite_gzip_bytes"])
    assert smallest["ratio"] == pytest.approx(variants["baseline+float"]["tflite_gzip_bytes"] /
                                              variants[smallest["name"]]["tflite_gzip_bytes"])
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
    model = keras.models.load_model(TRAINED_MODEL.in_artefact(inputs["model"]))
    train = np.load(inputs["dataset"] / "train.npz")
    test = np.load(inputs["dataset"] / "test.npz")
    int8 = tflite.to_tflite(model, "int8", train["x"][:100])
    agree = (tflite.tflite_predictions(int8, test["x"]).argmax(1) ==
             model.predict(test["x"], verbose=0).argmax(1)).mean()
    assert agree >= 0.95


def test_the_gate_fails_with_the_table_when_no_variant_qualifies(trained, tmp_path):
    with pytest.raises(StageError,
                       match=r"no compressed variant is within compress.max_accuracy_drop=0.0(.|\n)*pruned"):
        run_compress(trained, tmp_path, variants=("pruned",), tflite=("int8",), max_accuracy_drop=0.0,
                     target_sparsity=0.99, fine_tune_epochs=1)


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


def test_a_student_that_disagrees_with_its_teacher_more_than_the_gate_allows_is_trained_again(trained, capsys):
    cfg, inputs = trained
    one_epoch = CompressConfig(distill_epochs=1, distill_tries=2, max_accuracy_drop=0.0)
    settings = stage_view(replace(cfg, compress=one_epoch), compress)
    teacher = keras.models.load_model(TRAINED_MODEL.in_artefact(inputs["model"]))
    val = read_split(inputs["dataset"], "val").x
    student = tfmot_variants.distill(teacher, read_split(inputs["dataset"], "train"), val,
                                     data_spec(read_schema(inputs["schema"])), settings)
    printed = capsys.readouterr().out
    agreements = [float(a) for a in re.findall(r"student \d agrees with its teacher on ([\d.]+)%", printed)]
    assert len(agreements) == 2, "one epoch leaves the first student short of 100 %: a second one is trained"
    kept = (student.predict(val, verbose=0).argmax(axis=1) == teacher.predict(val, verbose=0).argmax(axis=1)).mean()
    assert kept * 100 == pytest.approx(max(agreements), abs=0.05), "the student that agrees best is kept"


def test_every_variant_can_be_exported_and_served_as_in_process(trained, tmp_path):
    """QAT variants used to fail in export ("expected 6 variables, but received 8"); each variant, saved as
    the compress stage saves the one it selects, goes through export and publishing, and serves what it
    computes in process."""
    cfg, inputs = trained
    settings = stage_view(replace(cfg, compress=CompressConfig(fine_tune_epochs=1, distill_epochs=1, distill_tries=1)),
                          compress)
    trained_model = keras.models.load_model(TRAINED_MODEL.in_artefact(inputs["model"]))
    train = read_split(inputs["dataset"], "train")
    made = tfmot_variants.train_variants(VARIANTS, trained_model, train, read_split(inputs["dataset"], "val").x,
                                         data_spec(read_schema(inputs["schema"])), settings,
                                         tf.distribute.get_strategy())
    rows = read_split(inputs["dataset"], "test").x[:8]
    expected, models = {}, []
    for name, model in made.items():
        compressed = tmp_path / name / "compressed"
        (compressed / "tflite").mkdir(parents=True)
        tfmot_variants.savable(model).save(compressed / "model.keras")
        expected[name] = model.predict(rows, verbose=0)
        exported = tmp_path / name / "export"
        exported.mkdir()
        export_inputs = {"compressed": compressed, "schema": inputs["schema"], "dataset": inputs["dataset"]}
        export.run(stage_view(cfg, export), Inputs(export_inputs, inputs.run), exported)
        repository.publish(exported / "saved_model", tmp_path / "repo" / name)
        models.append((name, tmp_path / "repo" / name, ""))
    server = ServerProcess(f"--model_config_file={write_config(tmp_path / 'models.config', models)}", "--port=0",
                           log_dir=tmp_path)
    try:
        for name in VARIANTS:
            server.wait_available(name)
        with RestClient(server.url) as client:
            for name in VARIANTS:
                served = client.predict(name, rows)["probabilities"]
                np.testing.assert_allclose(served, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    finally:
        server.stop()
    # an online update continues from what is served, whatever variant: here the quantization-aware one
    qat_version = tmp_path / "repo" / "qat" / "1"
    warm = stage_view(replace(cfg, train=replace(cfg.train, init_from=str(qat_version), epochs=1)), train_stage)
    (tmp_path / "hyperparameters").mkdir()
    (tmp_path / "hyperparameters" / "best.json").write_text("{}")
    (tmp_path / "update").mkdir()
    update_inputs = Inputs({**inputs.artefacts, "hyperparameters": tmp_path / "hyperparameters"}, inputs.run)
    train_stage.run(warm, update_inputs, tmp_path / "update")
    evaluated = tmp_path / "evaluated"
    evaluated.mkdir()
    evaluation = evaluate.run(stage_view(replace(cfg, evaluate=replace(cfg.evaluate, min_accuracy=0.5)), evaluate),
                              Inputs({**inputs.artefacts, "model": tmp_path / "update" / "model"}, inputs.run), evaluated)
    assert evaluation["accuracy"] >= 0.5


def test_what_tflite_cannot_convert_is_found_before_fine_tuning_in_one_line(capfd):
    """A recurrent loop that is not unrolled has no TFLite form at a dynamic batch size (TensorListReserve)."""
    inputs = keras.Input((8, 8))
    looped = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.LSTM(4)(inputs)))
    reasons = tfmot_variants.unsupported(("qat", "pqat", "cluster"), looped, 4, np.zeros((4, 8, 8), np.float32))
    assert set(reasons) == {"qat", "pqat"} and reasons["qat"].startswith("TFLite cannot convert its int8 form (")
    assert "\n" not in reasons["qat"] and len(reasons["qat"]) <= 350  # one line, not the converter's dump
    assert "loc(" not in capfd.readouterr().err  # the MLIR diagnostics are kept out of the terminal
    spec = DataSpec(64, (8, 8), "classification", 3, np.zeros(64, np.float32), np.ones(64, np.float32))
    unrolled = build_model(ModelConfig(name="rnn", width=4, depth=1), spec)  # models/rnn.py unrolls its loop
    assert tfmot_variants.unsupported(("qat", "pqat", "pruned", "cluster"), unrolled, 4,
                                      np.zeros((4, 64), np.float32)) == {}
    assert tflite.tflite_predictions(tflite.to_tflite(unrolled, "int8", np.random.rand(20, 64).astype(np.float32)),
                                     np.zeros((300, 64), np.float32)).shape == (300, 3)
