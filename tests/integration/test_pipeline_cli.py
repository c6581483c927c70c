"""The real CLI (`python -m pipeline.run` in a subprocess) on digits with few epochs."""
import base64
import io
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

import repository
from pipeline.cli import main
from tests.integration.completeness import assert_shares_add_up
from tests.pipeline_cli import (DIGITS_RUN, TUNE, assert_training_artefacts, newest_run, pipeline_command, pipeline_env,
                                run_pipeline)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_pipeline_cli")]  # module fixture: once, on one worker


cli = run_pipeline


def manifest(workdir: Path) -> dict:
    """The manifest of the run started last in `workdir`, whatever became of it."""
    return json.loads((newest_run(workdir / "runs") / "manifest.json").read_text())


def statuses(workdir: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in manifest(workdir)["stages"]}


@pytest.fixture(scope="module")
def workdir(digits, tmp_path_factory):
    """The shared digits run (DIGITS_RUN), copied: these tests run more pipelines in it."""
    return digits.copy(tmp_path_factory.mktemp("pipeline") / "work").workdir


def test_end_to_end_run_pushes_a_servable_accurate_model(workdir):
    version_dir = workdir / "model_repository" / "digits" / "1"
    model = tf.saved_model.load(str(version_dir))
    test = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")
    out = model.signatures["serving_default"](x=tf.constant(test["x"]))
    assert out["probabilities"].shape == (len(test["y"]), 10)
    assert out["class_id"].shape == (len(test["y"]),)
    accuracy = float((out["class_id"].numpy() == test["y"]).mean())
    assert accuracy >= 0.9

    examples = [
        tf.train.Example(features=tf.train.Features(feature={
            "x": tf.train.Feature(float_list=tf.train.FloatList(value=row))})).SerializeToString()
        for row in test["x"][:5]
    ]
    classified = model.signatures["classify"](inputs=tf.constant(examples))
    assert classified["classes"].shape == (5, 10) and classified["scores"].shape == (5, 10)
    assert classified["classes"].numpy()[0].tolist() == [str(i).encode() for i in range(10)]
    np.testing.assert_allclose(classified["scores"].numpy(), out["probabilities"].numpy()[:5], rtol=1e-5)

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    methods = {k: v.method_name for k, v in saved.meta_graphs[0].signature_def.items() if not k.startswith("__")}
    assert methods == {"serving_default": "tensorflow/serving/predict", "classify": "tensorflow/serving/classify",
                       "explain": "tensorflow/serving/predict"}
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    shipped = json.loads((version_dir / "assets.extra" / "schema.json").read_text())  # what the server counts inputs by
    assert len(shipped["features"]) == 64 and shipped["features"][0]["max"] >= shipped["features"][0]["min"]
    selected = json.loads(next((workdir / "runs" / "latest" / "compress").glob("report.json")).read_text())["selected"]
    assert selected != "baseline"
    assert (version_dir / "assets.extra" / f"{selected}+int8.tflite").stat().st_size > 0


def test_explain_shares_each_rows_score_out_among_its_pixels(workdir):
    """Integrated gradients on the test rows: the class explained is the one predicted, its probability the score,
    the black image's the baseline score, and each row's 64 shares add up to the difference within 5 %. A ReLU CNN's
    kinks leave a few rows above 5 % at 32 steps (a median of 1 %); a wrong step weight, path or baseline puts the
    median above 2.5 % and most rows above 5 % (benchmarks/results/explain.md). infra_validate asked the served
    signature over REST and gRPC, once each, and got what it computes in process."""
    version_dir = workdir / "model_repository" / "digits" / "1"
    model = tf.saved_model.load(str(version_dir))
    x = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")["x"]
    answer = {name: value.numpy() for name, value in model.signatures["explain"](x=tf.constant(x)).items()}
    predicted = model.signatures["serving_default"](x=tf.constant(x))["probabilities"].numpy()
    assert sorted(answer) == ["attributions", "baseline_score", "class_id", "score"]
    assert answer["attributions"].shape == x.shape and answer["attributions"].dtype == np.float32
    np.testing.assert_array_equal(answer["class_id"], predicted.argmax(axis=1))
    np.testing.assert_allclose(answer["score"], predicted.max(axis=1), rtol=1e-5)
    black = model.signatures["serving_default"](x=tf.zeros([1, 64]))["probabilities"].numpy()[0]
    np.testing.assert_allclose(answer["baseline_score"], black[answer["class_id"]], rtol=1e-5, atol=1e-7)
    assert_shares_add_up(answer, ["attributions"], within=0.9, median=0.025)
    said = json.loads((version_dir / "assets.extra" / "explain.json").read_text())
    assert (said["baseline"], said["steps"], said["score"]) == ("a black image (every pixel 0)", 32,
                                                                 "the predicted class's probability")
    served = json.loads((workdir / "runs" / "latest" / "infra_validate" / "infra_validation" / "report.json").read_text())
    assert set(served["explain_max_abs_difference"]) == {"REST", "gRPC"}
    assert max(served["explain_max_abs_difference"].values()) <= 1e-4


def test_at_128_steps_every_rows_shares_add_up_within_5_percent(workdir, tmp_path):
    """The ReLU CNN's few rows above 5 % at the default 32 steps are the sum's error at its kinks, not the path's:
    the export stage run again on the same model with export.explain_steps=128 writes a signature whose every
    test row adds up within 5 % (the completeness axiom, row by row)."""
    from pipeline.artifacts import Inputs, RunInfo
    from pipeline.config import load_config
    from pipeline.runner import stage_view
    from pipeline.stages import export

    run = workdir / "runs" / "latest"
    cfg = load_config(None, [*DIGITS_RUN, "export.explain_steps=128"])
    inputs = {"compressed": run / "compress" / "compressed", "schema": run / "validate" / "schema",
              "dataset": run / "validate" / "dataset"}
    export.run(stage_view(cfg, export), Inputs(inputs, RunInfo("test", {})), tmp_path)
    model = tf.saved_model.load(str(tmp_path / "saved_model"))
    assert json.loads((tmp_path / "saved_model" / "assets.extra" / "explain.json").read_text())["steps"] == 128
    x = np.load(run / "validate" / "dataset" / "test.npz")["x"]
    answer = {name: value.numpy() for name, value in model.signatures["explain"](x=tf.constant(x)).items()}
    assert_shares_add_up(answer, ["attributions"], within=1.0, median=0.005)  # measured: 0.0026


def test_a_whole_run_prints_no_tensorflow_warnings_or_noise(workdir):
    """Every stage, tuning and compression included, as the user saw it: no Python warning of TensorFlow's
    (export used to print "Compiled the loaded model, but the compiled metrics have yet to be built" twice)
    and none of its C++ start-up lines."""
    printed = (workdir / "printed.txt").read_text()
    assert "[9/9] push: ran" in printed
    noise = [line for line in printed.splitlines() if line.startswith("WARNING:tensorflow") or
             any(mark in line for mark in ("failed call to cuInit", "oneDNN custom operations", "cpu_feature_guard"))]
    assert noise == []


def test_manifest_documents_stages_signatures_and_versions(workdir):
    run = manifest(workdir)
    assert run["status"] == "succeeded"
    assert [s["name"] for s in run["stages"]] == ["ingest", "validate", "tune", "train", "evaluate", "compress", "export",
                                                  "infra_validate", "push"]
    export = next(s for s in run["stages"] if s["name"] == "export")
    assert export["metrics"]["signatures"]["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": [-1, 64]}}
    assert run["versions"]["tensorflow"].startswith("2.21")
    report = (workdir / "runs" / "latest" / "report.html").read_text()
    assert report.count("<img") == 3 and "Compression (measured on the validation split)" in report  # curves,
    # attribution maps, compression plot


SECTIONS = ["run", "stages", "data", "tuning", "training", "evaluation", "explanations", "compression", "serving",
            "signatures", "config"]


@pytest.fixture(scope="module")
def chromium() -> str:
    """Headless Chromium (Debian's package), installed when missing; the test is skipped only if it cannot be."""
    found = shutil.which("chromium")
    if found is None:
        install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
        if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
            subprocess.run(install, capture_output=True, timeout=600)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("chromium is not installed and `apt-get install chromium` failed (no root, or no package mirror)")
    return found


def test_report_is_one_self_contained_page_with_every_section(workdir, tmp_path, chromium):
    report = workdir / "runs" / "latest" / "report.html"
    page = report.read_text()
    assert re.findall(r"<section id='(\w+)'>", page) == SECTIONS
    assert not re.findall(r"(?:src|href)='(?!data:)", page)  # nothing fetched from elsewhere
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3  # training curves, attribution maps, compression plot
    for data in images:
        Image.open(io.BytesIO(base64.b64decode(data))).verify()
    for text in ("overrides: <code>tune.algorithm=random", "Selected <b>", "held-out test accuracy", "Infra validation:",
                 "curl -d @", "rows train ", "Published: <code>", "Confusion matrix", "alt='attribution maps'",
                 "from the baseline: a black image (every pixel 0). Shares add up to the score's move"):
        assert text in page, text
    screenshot = tmp_path / "report.png"
    shot = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={screenshot}", "--window-size=1280,6000", report.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    assert pixels.shape == (6000, 1280) and pixels.std() > 10  # something was drawn, not a blank page


def test_the_pushed_version_is_in_the_registry_with_its_lineage(workdir):
    run = manifest(workdir)
    push = next(s for s in run["stages"] if s["name"] == "push")
    shown = subprocess.run([sys.executable, "-m", "pipeline.registry", "show", "digits", "1"], cwd=workdir,
                           env=pipeline_env(), capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    record = json.loads(shown.stdout)
    compressed = json.loads((workdir / "runs" / "latest" / "compress" / "report.json").read_text())
    assert record["run_id"] == push["produced_by"] and record["variant"] == compressed["selected"]
    assert record["metrics"]["accuracy"] >= 0.9 and record["infra_validation"]["p99_ms"] > 0
    assert record["config"]["train"]["epochs"] == 6 and len(record["data_fingerprint"]) == 64
    labelled = subprocess.run([sys.executable, "-m", "pipeline.registry", "label", "digits", "stable", "1"],
                              cwd=workdir, env=pipeline_env(), capture_output=True, text=True)
    assert labelled.returncode == 0, labelled.stderr[-2000:]
    planned = cli(workdir, *DIGITS_RUN, "train.init_from=label:stable", "--list")
    assert planned.returncode == 0 and "train           will run" in planned.stdout, planned.stderr[-2000:]
    missing = cli(workdir, *DIGITS_RUN, "train.init_from=label:canary", "--list")
    assert "train           will fail: train.init_from=label:canary: model 'digits' has no label 'canary'" in missing.stdout


def test_same_run_twice_is_fully_cached_and_says_what_a_user_can_type(workdir):
    result = cli(workdir, *DIGITS_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert set(statuses(workdir).values()) == {"cached"}
    base = (workdir / "model_repository" / "digits").resolve()  # this directory's, though the run was copied here
    assert f"Serve it:  {sys.executable} -m serving --rest_api_port=8501 --model_name=digits --model_base_path={base}" \
        in result.stdout  # the interpreter that ran it: a bare `python` may not find the project
    sample = json.loads((workdir / "runs" / "latest" / "export" / "sample_request.json").read_text())["instances"][0]
    test = np.load(workdir / "runs" / "latest" / "validate" / "dataset" / "test.npz")
    assert sample == test["x"][0].tolist()  # a real test row, and its true label beside the command
    assert f"digits:predict   # a test row; its true label: {test['y'][0]}" in result.stdout
    assert "Note:" not in result.stdout  # version 1 is the newest
    assert sorted(p.name for p in (workdir / "model_repository" / "digits").iterdir()) == [".last_version", "1"]
    assert sorted(p.name for p in (workdir / "model_repository").iterdir()) == ["digits", "models.config",
                                                                                "registry.sqlite"]


def test_changing_epochs_reruns_train_and_what_follows(workdir):
    result = cli(workdir, *TUNE, "train.epochs=5", "compress.variants=[]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert statuses(workdir) == {"ingest": "cached", "validate": "cached", "tune": "cached", "train": "ran",
                                 "evaluate": "ran", "compress": "ran", "export": "ran", "infra_validate": "ran",
                                 "push": "ran"}
    assert (workdir / "model_repository" / "digits" / "2" / "saved_model.pb").is_file()


def test_a_cached_push_whose_version_was_deleted_publishes_again(workdir):
    newest = max(repository.versions(workdir / "model_repository" / "digits"))
    cached = cli(workdir, *DIGITS_RUN)  # its version 1 is not the newest now: the summary says so
    assert f"Note: version {newest} of 'digits' is newer; a server of " in cached.stdout, cached.stdout[-2000:]
    shutil.rmtree(workdir / "model_repository" / "digits" / "1")  # as `registry gc` deletes a version
    result = cli(workdir, *DIGITS_RUN)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("push: its cached result no longer holds (version 1 it published is gone from "
            "model_repository/digits); running it again") in result.stdout
    assert statuses(workdir) == {**{name: "cached" for name in statuses(workdir)}, "push": "ran"}
    pushed = json.loads((workdir / "runs" / "latest" / "push" / "pushed.json").read_text())
    assert pushed["version"] == newest + 1 and (workdir / pushed["path"] / "saved_model.pb").is_file()
    again = cli(workdir, *DIGITS_RUN)  # and now the cache holds again
    assert again.returncode == 0 and set(statuses(workdir).values()) == {"cached"}, again.stderr[-2000:]


def test_bad_config_exits_2_with_every_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train.epoch=3", "model.name=resnet"]) == 2
    stderr = capsys.readouterr().err
    assert "Config error in the command line (2 problems)" in stderr
    assert "train.epoch: unknown key. Did you mean 'train.epochs'?" in stderr
    assert "model.name: expected one of 'cnn', 'mlp', 'rnn', 'recommender'" in stderr
    assert not (tmp_path / "runs").exists()


def test_missing_data_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data.source=nope.csv"]) == 2
    assert "data.source: no such file" in capsys.readouterr().err


def test_a_failed_gate_exits_1_and_publishes_nothing(tmp_path):
    result = cli(tmp_path, "train.epochs=1", "model.width=4", "evaluate.min_accuracy=0.99")
    assert result.returncode == 1
    assert "Stage 'evaluate' failed: test accuracy" in result.stderr
    assert "below the gate evaluate.min_accuracy=0.99" in result.stderr
    run = manifest(tmp_path)
    assert run["status"] == "failed"
    assert (tmp_path / "runs" / run["run_id"] / "evaluate.failed" / "log.txt").is_file()
    assert not (tmp_path / "model_repository").exists()
    assert not (tmp_path / "runs" / "latest").exists()  # it points at the newest run that succeeded: none yet


def test_until_then_resume_continues_the_same_run(tmp_path):
    first = cli(tmp_path, "train.epochs=2", "--until", "validate")
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = manifest(tmp_path)["run_id"]
    listed = cli(tmp_path, "train.epochs=2", "--list")
    assert "validate        cached" in listed.stdout and "train           will run" in listed.stdout
    resumed = cli(tmp_path, "--resume", run_id, "--until", "train")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert statuses(tmp_path) == {"ingest": "resumed", "validate": "resumed", "tune": "ran", "train": "ran"}
    assert manifest(tmp_path)["run_id"] == run_id


MIRRORED = """
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_strategy_trains_on_two_logical_cpus(tmp_path):
    """The custom loop on 2 replicas: tests/pipeline/test_custom_loop.py (the step) and test_distributed.py (2 workers)."""
    result = cli(tmp_path, "train.strategy=mirrored", "train.epochs=5", "--until", "evaluate", code=MIRRORED)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "strategy mirrored with 2 replica(s)" in result.stdout
    evaluate = next(s for s in manifest(tmp_path)["stages"] if s["name"] == "evaluate")
    assert evaluate["metrics"]["accuracy"] >= 0.9
    assert_training_artefacts(tmp_path / "runs" / "latest" / "train", epochs=5)


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path):
    process = subprocess.Popen(pipeline_command("train.epochs=200", "train.early_stopping_patience=0", "--until",
                                                "train"), cwd=tmp_path, env=pipeline_env(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in process.stdout:
        if line.startswith("Epoch 2/"):  # training is under way
            break
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    run = manifest(tmp_path)
    assert run["status"] == "interrupted" and run["stages"][-1] == {**run["stages"][-1], "name": "train",
                                                                   "status": "interrupted"}
    assert f"Continue it with --resume {run['run_id']}" in stderr
    assert not list((tmp_path / "runs" / ".cache" / "train").glob(".tmp-*"))
    resumed = cli(tmp_path, "--resume", run["run_id"], "train.epochs=2")  # only output_dir= may be given with --resume
    assert resumed.returncode == 2 and "drop the overrides" in resumed.stderr


def test_resume_finds_a_run_made_with_another_output_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    first = cli(tmp_path, f"output_dir={elsewhere}", "--until", "ingest")
    assert first.returncode == 0, first.stderr[-2000:]
    run_id = json.loads((elsewhere / "latest" / "manifest.json").read_text())["run_id"]
    missing = cli(tmp_path, "--resume", run_id, "--until", "validate")
    assert missing.returncode == 2 and "give the run's directory, or its id with the output_dir=DIR" in missing.stderr
    for how in ([run_id, f"output_dir={elsewhere}"], [str(elsewhere / run_id)]):
        resumed = cli(tmp_path, "--resume", *how, "--until", "validate")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = json.loads((elsewhere / run_id / "manifest.json").read_text())
    assert [(s["name"], s["status"]) for s in run["stages"]] == [("ingest", "resumed"), ("validate", "resumed")]
