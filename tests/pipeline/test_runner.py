"""The runner: cache keys, cache hits, atomic failure, --resume and --force (on the fast stages)."""
import csv
import json

import pytest

from pipeline.config import load_config
from pipeline.runner import Runner, StageFailed, project_sources
from pipeline.stages import train, validate


def config(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", *overrides])


def states(runner, until):
    return {name: state.split(" ")[0] for name, state in runner.plan(until)}


def test_a_second_identical_run_is_fully_cached(tmp_path):
    first = Runner(config(tmp_path)).run("validate", log=lambda _: None)
    second = Runner(config(tmp_path)).run("validate", log=lambda _: None)
    assert [r.status for r in first] == ["ran", "ran"]
    assert [r.status for r in second] == ["cached", "cached"]
    assert [r.key for r in first] == [r.key for r in second]
    assert second[0].produced_by == first[0].produced_by != Runner(config(tmp_path)).run_id


def test_changing_a_train_key_keeps_the_data_stages_cached(tmp_path):
    Runner(config(tmp_path)).run("validate", log=lambda _: None)
    plan = states(Runner(config(tmp_path, "train.epochs=1")), "train")
    assert plan == {"ingest": "cached", "validate": "cached", "tune": "will", "train": "will"}  # tune reads train.*
    plan = states(Runner(config(tmp_path, "data.val_fraction=0.2")), "validate")
    assert plan == {"ingest": "will", "validate": "will"}
    plan = states(Runner(config(tmp_path, "seed=7")), "validate")
    assert plan == {"ingest": "will", "validate": "will"}


def test_code_fingerprint_follows_project_imports():
    assert {"pipeline.stages.train", "models.cnn", "models.common", "pipeline.distribute"} <= set(project_sources(train))
    assert "models.cnn" not in project_sources(validate)
    assert "pipeline.stages.ingest" in project_sources(validate)


def test_force_reruns_and_identical_output_keeps_downstream_cached(tmp_path):
    Runner(config(tmp_path)).run("validate", log=lambda _: None)
    records = Runner(config(tmp_path), force=("ingest",)).run("validate", log=lambda _: None)
    assert [r.status for r in records] == ["ran", "cached"]


def test_a_failing_stage_keeps_its_partial_output_aside_and_caches_nothing(tmp_path):
    source = tmp_path / "d.csv"
    with source.open("w", newline="") as f:
        csv.writer(f).writerows([["a", "b"], ["1", "2"]])
    runner = Runner(config(tmp_path, f"data.source={source}"))
    with pytest.raises(StageFailed) as info:
        runner.run("validate", log=lambda _: None)
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
    first.run("ingest", log=lambda _: None)
    resumed = Runner(config(tmp_path), run_id=first.run_id).run("validate", log=lambda _: None)
    assert [r.status for r in resumed] == ["resumed", "ran"]
    manifest = json.loads((first.run_dir / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["ingest", "validate"]


def test_unknown_stage_names_are_rejected():
    with pytest.raises(ValueError, match="--force 'trian': unknown stage"):
        Runner(load_config(), force=("trian",))
