"""The pipeline from Python (a notebook, a script): what `python -m pipeline.run` does, as functions.

    import pipeline
    result = pipeline.run("digits", overrides={"train.epochs": 5})
    result.metrics["evaluate"]["accuracy"], result.version, result.report

`run` raises the same errors the CLI prints: ConfigError (every problem at once), StageFailed (which
stage, why, where its log is; a report.html is still written, with that log's tail). The CLI is a thin
layer over these functions.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import yaml

from pipeline.config import config_from_dict, load_config
from pipeline.errors import CommandLineError, StageFailed
from pipeline.progress import Reporter
from pipeline.report import write_report
from pipeline.runner import MANIFEST, Runner, StageRecord

Overrides = Mapping[str, object] | Iterable[str] | None
PYTHON_OVERRIDES = "the overrides given to pipeline.run"  # where a config error in them came from


@dataclass(frozen=True)
class RunResult:
    """One run, as its manifest records it."""

    run_id: str
    run_dir: Path
    status: str  # succeeded | failed | interrupted | running
    stages: dict[str, StageRecord]  # status, metrics, time, cache key per stage, in run order
    report: Path | None  # report.html
    model_path: Path | None  # the version push published (None if push did not run)
    version: int | None

    @property
    def metrics(self) -> dict[str, dict]:
        """Each stage's metrics: result.metrics["evaluate"]["accuracy"]."""
        return {name: record.metrics for name, record in self.stages.items()}


def run(config: str | Path | None = "digits", overrides: Overrides = None, until: str | None = None,
        force: Iterable[str] = (), reporter: Reporter | None = None,
        stage_output: TextIO | None | Literal["stdout"] = "stdout", overrides_from: str = PYTHON_OVERRIDES) -> RunResult:
    """Run the pipeline: `config` is a name in pipeline/configs or a YAML path; `overrides` is
    {"train.epochs": 5} or ["train.epochs=5"]; `until` stops after a stage; `force` re-runs stages.
    `reporter` shows progress (default: a line per stage); what stages print goes to `stage_output`.
    `overrides_from` is where a config error says the overrides came from."""
    given = override_list(overrides)
    runner = Runner(load_config(config, given, overrides_from), force=tuple(force), overrides=tuple(given))
    return _run(runner, until, reporter, stage_output)


def resume(run_ref: str | Path, output_dir: str | Path | None = None, until: str | None = None,
           force: Iterable[str] = (), reporter: Reporter | None = None,
           stage_output: TextIO | None | Literal["stdout"] = "stdout") -> RunResult:
    """Continue a run after its last completed stage: `run_ref` is its directory, or its id under
    `output_dir` (default: the default config's)."""
    return _run(_resumed_runner(run_ref, output_dir, force), until, reporter, stage_output)


def plan(config: str | Path | None = "digits", overrides: Overrides = None, until: str | None = None,
         force: Iterable[str] = (), resume: str | Path | None = None, output_dir: str | Path | None = None,
         overrides_from: str = PYTHON_OVERRIDES) -> list[tuple[str, str]]:
    """(stage, state) for each stage: what a run (or the resumed run `resume`) would reuse and execute."""
    if resume is not None:
        return _resumed_runner(resume, output_dir, force).plan(until)
    return Runner(load_config(config, override_list(overrides), overrides_from), force=tuple(force)).plan(until)


def load_run(run_ref: str | Path, output_dir: str | Path | None = None) -> RunResult:
    """A past run: its directory, or its id under `output_dir` (default: the default config's)."""
    run_dir = find_run(run_ref, output_dir)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    stages = {s["name"]: StageRecord(**s) for s in manifest["stages"]}
    pushed = stages.get("push")
    published = pushed is not None and pushed.status != "failed" and "path" in pushed.metrics
    report = run_dir / "report.html"
    return RunResult(run_id=manifest["run_id"], run_dir=run_dir, status=manifest["status"], stages=stages,
                     report=report if report.is_file() else None,
                     model_path=Path(pushed.metrics["path"]) if published else None,
                     version=pushed.metrics["version"] if published else None)


def find_run(run_ref: str | Path, output_dir: str | Path | None = None) -> Path:
    """The directory of a run given as a path, or as an id under `output_dir` or the default config's."""
    places = [Path(run_ref)]
    places += [Path(d) / str(run_ref) for d in (output_dir, load_config().output_dir) if d is not None]
    for place in places:
        if (place / MANIFEST).is_file() and (place / "config.json").is_file():
            return place
    raise CommandLineError(f"run {str(run_ref)!r}: no run with a manifest in {', '.join(map(str, places))}; give the "
                           f"run's directory, or its id with the output_dir=DIR it was made with.")


def override_list(overrides: Overrides) -> list[str]:
    """["key=value", ...] from a mapping (values written as YAML, e.g. lists as [a, b]) or a list as it is."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}"
                for key, value in overrides.items()]
    return list(overrides)


def _resumed_runner(run_ref: str | Path, output_dir: str | Path | None, force: Iterable[str]) -> Runner:
    run_dir = find_run(run_ref, output_dir)
    saved = run_dir / "config.json"
    cfg = config_from_dict(json.loads(saved.read_text()), str(saved))
    overrides = json.loads((run_dir / MANIFEST).read_text()).get("overrides", [])
    return Runner(dataclasses.replace(cfg, output_dir=str(run_dir.parent)), run_id=run_dir.name, force=tuple(force),
                  overrides=tuple(overrides))


def _run(runner: Runner, until: str | None, reporter: Reporter | None, stage_output) -> RunResult:
    try:
        runner.run(until, reporter, stage_output)
    except StageFailed as failure:
        write_report(runner.run_dir, list(runner.records.values()), failure)
        raise
    write_report(runner.run_dir, list(runner.records.values()))
    return load_run(runner.run_dir)
