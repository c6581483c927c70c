"""The runner: cache keys, cache hits, atomic failure, --resume and --force (on the fast stages)."""
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.artifacts import dir_fingerprint
from pipeline.cleanup import collect_garbage
from pipeline.config import load_config
from pipeline.errors import CommandLineError, StageError, StageFailed
from pipeline.progress import SilentReporter
from pipeline.runner import Runner, project_sources, stage_view
from pipeline.stages import STAGES, train, validate
from pipeline.views import keyed

ROOT = Path(__file__).resolve().parents[2]


def config(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", *overrides])


def states(runner, until):
    return {name: state.split(" ")[0] for name, state in runner.plan(until)}


def test_a_second_identical_run_is_fully_cached(tmp_path):
    first = Runner(config(tmp_path)).run("validate", reporter=SilentReporter())
    second = Runner(config(tmp_path)).run("validate", reporter=SilentReporter())
    assert [r.status for r in first] == ["ran", "ran"]
    assert [r.status for r in second] == ["cached", "cached"]
    assert [r.key for r in first] == [r.key for r in second]
    assert second[0].produced_by == first[0].produced_by != Runner(config(tmp_path)).run_id


def test_changing_a_train_key_keeps_the_data_stages_cached(tmp_path):
    Runner(config(tmp_path)).run("validate", reporter=SilentReporter())
    plan = states(Runner(config(tmp_path, "train.epochs=1")), "train")
    assert plan == {"ingest": "cached", "validate": "cached", "tune": "will", "train": "will"}  # tune never ran
    Runner(config(tmp_path)).run("tune", reporter=SilentReporter())
    plan = states(Runner(config(tmp_path, "train.epochs=1")), "train")
    assert plan == {"ingest": "cached", "validate": "cached", "tune": "cached", "train": "will"}  # tune reads no epochs
    plan = states(Runner(config(tmp_path, "data.val_fraction=0.2")), "validate")
    assert plan == {"ingest": "will", "validate": "will"}
    plan = states(Runner(config(tmp_path, "seed=7")), "validate")
    assert plan == {"ingest": "will", "validate": "will"}


def test_code_fingerprint_follows_project_imports():
    assert {"pipeline.stages.train", "pipeline.training.trainer", "pipeline.training.worker", "models.cnn",
            "models.layers", "pipeline.training.distribute", "pipeline.specs", "pipeline.views"} <= set(project_sources(train))
    assert "models.cnn" not in project_sources(validate)
    assert "pipeline.artifacts" in project_sources(validate)


def test_no_stage_imports_another_stage():
    for name, stage in STAGES.items():
        others = {f"pipeline.stages.{other}" for other in STAGES if other != name}
        assert not others & set(project_sources(stage)), name


FINGERPRINT = "from pipeline.runner import code_fingerprint; from pipeline.stages import train; print(code_fingerprint(train))"


def test_editing_serving_code_keeps_train_cached_and_editing_a_model_does_not(tmp_path):
    for package in ("pipeline", "models", "serving", "repository"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))

    def fingerprint() -> str:
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        return subprocess.run([sys.executable, "-c", FINGERPRINT], env=env, cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    before = fingerprint()
    for module in ("serving/client.py", "serving/rest.py", "serving/process.py", "serving/codec/response.py",
                   "pipeline/stages/push.py", "pipeline/report.py", "pipeline/config.py", "pipeline/runner.py"):
        with (tmp_path / module).open("a") as f:
            f.write("\n# edited\n")
    assert fingerprint() == before
    with (tmp_path / "models" / "cnn.py").open("a") as f:
        f.write("\n# edited\n")
    assert fingerprint() != before


@pytest.mark.slow  # it trains
def test_push_settings_and_display_settings_do_not_retrain(tmp_path):
    Runner(config(tmp_path, "train.epochs=1")).run("train", reporter=SilentReporter())
    for change in ("push.model_name=other", "push.repository=elsewhere", "train.verbose=0", "push.smoke_test_timeout_s=5"):
        assert states(Runner(config(tmp_path, "train.epochs=1", change)), "train")["train"] == "cached", change
    assert states(Runner(config(tmp_path, "train.epochs=2")), "train")["train"] == "will"


def test_init_from_keys_train_on_the_version_it_resolves_to(tmp_path):
    base = tmp_path / "repo" / "digits" / "1"
    base.mkdir(parents=True)
    (base / "saved_model.pb").write_bytes(b"one")
    (base / "keras_metadata.pb").write_bytes(b"one")
    cfg = config(tmp_path, f"push.repository={tmp_path / 'repo'}", "train.init_from=latest")
    view = stage_view(cfg, train)
    assert view.train.init_from == str(base.resolve())
    assert "push" not in keyed(view)
    with pytest.raises(StageError, match="train.init_from=latest: .* holds no version"):
        stage_view(config(tmp_path, f"push.repository={tmp_path / 'empty'}", "train.init_from=latest"), train)


def test_planning_reads_the_registry_without_writing_it_even_while_another_process_holds_its_write_lock(tmp_path):
    import sqlite3

    import repository
    from pipeline.registry import Registry

    model_dir = tmp_path / "repo" / "digits"
    for version in ("1", "2"):
        (model_dir / version).mkdir(parents=True)
        (model_dir / version / "saved_model.pb").write_bytes(b"model")
        (model_dir / version / "keras_metadata.pb").write_bytes(b"model")
    repository.write_lineage(model_dir / "1", {"run_id": "r1", "content": "one"})
    with Registry(tmp_path / "repo") as registry, registry.transaction():
        registry.set_label("digits", "stable", 1, "label")
    repository.write_lineage(model_dir / "2", {"run_id": "r2", "content": "two"})  # a read-write open records it
    database = tmp_path / "repo" / "registry.sqlite"
    before = database.read_bytes()
    writer = sqlite3.connect(database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process is writing the registry: planning must not wait for it
    try:
        cfg = config(tmp_path, f"push.repository={tmp_path / 'repo'}", "train.init_from=label:stable")
        assert stage_view(cfg, train).train.init_from == str((model_dir / "1").resolve())
        assert Runner(cfg).plan("train")[-1][1].startswith("will run")
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert database.read_bytes() == before
    assert sorted(p.name for p in database.parent.iterdir()) == ["digits", "registry.sqlite"]


def test_a_stage_sees_only_the_fields_it_declares():
    view = stage_view(load_config(), validate)
    assert view.validate.max_reject_fraction == 0.05
    with pytest.raises(AttributeError):
        view.train  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.validate.max_reject_fraction = 1


def test_force_reruns_and_identical_output_keeps_downstream_cached(tmp_path):
    Runner(config(tmp_path)).run("validate", reporter=SilentReporter())
    records = Runner(config(tmp_path), force=("ingest",)).run("validate", reporter=SilentReporter())
    assert [r.status for r in records] == ["ran", "cached"]


def test_a_failing_stage_keeps_its_partial_output_aside_and_caches_nothing(tmp_path):
    source = tmp_path / "d.csv"
    with source.open("w", newline="") as f:
        csv.writer(f).writerows([["a", "b"], ["1", "2"]])
    runner = Runner(config(tmp_path, f"data.source={source}"))
    with pytest.raises(StageFailed) as info:
        runner.run("validate", reporter=SilentReporter())
    failed = info.value
    assert failed.stage == "ingest" and failed.expected
    assert "label column 'label'" in failed.reason
    assert failed.kept == runner.run_dir / "ingest.failed"
    assert "Traceback" in (failed.kept / "log.txt").read_text()
    assert not (tmp_path / "runs" / ".cache" / "ingest").exists() or not any(
        p for p in (tmp_path / "runs" / ".cache" / "ingest").iterdir())
    manifest = json.loads((runner.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["stages"][-1]["status"] == "failed"


def test_resume_continues_after_the_last_completed_stage(tmp_path):
    first = Runner(config(tmp_path))
    first.run("ingest", reporter=SilentReporter())
    resumed = Runner(config(tmp_path), run_id=first.run_id).run("validate", reporter=SilentReporter())
    assert [r.status for r in resumed] == ["resumed", "ran"]
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "validate"]


def test_unknown_stage_names_are_rejected():
    with pytest.raises(CommandLineError, match="--force 'trian': unknown stage"):
        Runner(load_config(), force=("trian",))


def test_force_replaces_the_cached_entry_with_what_it_just_computed(tmp_path):
    first = Runner(config(tmp_path, "train.epochs=1")).run("train", reporter=SilentReporter())[-1]
    forced_runner = Runner(config(tmp_path, "train.epochs=1"), force=("train",))
    forced = forced_runner.run("train", reporter=SilentReporter())[-1]
    assert (forced.status, forced.key) == ("ran", first.key)
    entry = tmp_path / "runs" / ".cache" / "train" / forced.key
    assert (forced_runner.run_dir / "train").resolve() == entry.resolve()
    assert dir_fingerprint(entry / "model") == forced.outputs["model"] != first.outputs["model"]  # .keras files are dated
    assert json.loads((entry / "manifest.json").read_text())["record"]["produced_by"] == forced_runner.run_id
    assert [p.name for p in entry.parent.iterdir() if p.name.startswith(".") and p.name != ".backup"] == []


def test_staging_dirs_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    cache = tmp_path / "runs" / ".cache" / "ingest"
    dead, alive = cache / ".tmp-0123456789ab-999999999-beef", cache / f".tmp-0123456789ab-{os.getpid()}-cafe"
    dead.mkdir(parents=True)
    alive.mkdir()
    Runner(config(tmp_path)).run("ingest", reporter=SilentReporter())
    assert not dead.exists() and alive.exists()


def test_gc_keeps_the_newest_runs_and_what_they_use_and_never_models(tmp_path):
    repository_dir = tmp_path / "model_repository" / "digits" / "1"
    repository_dir.mkdir(parents=True)
    runs = [Runner(config(tmp_path, f"seed={seed}")) for seed in (1, 2, 3)]
    for runner in runs:
        runner.run("validate", reporter=SilentReporter())
    kept = {link.resolve() for link in runs[-1].run_dir.iterdir() if link.is_symlink()}
    removed = collect_garbage(tmp_path / "runs", keep=1)
    assert removed["runs_removed"] == 2 and removed["entries_removed"] == 4 and removed["bytes_freed"] > 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".cache", runs[-1].run_id, "latest"]
    assert {e.resolve() for e in (tmp_path / "runs" / ".cache").glob("*/*")} == kept
    assert repository_dir.is_dir()
