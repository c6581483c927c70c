"""Run a config of pipeline/configs as shipped, from the repository root (its data paths are relative to it),
with only the output places moved to a temporary directory, and without its compression section: what that
delivers on these configs is benchmarks/compression_bench.py's to measure (results/compression.md), and the
stage itself is test_compress.py's to test; here it would double the run."""
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from localhost.ports import free_port
from pipeline.artifacts import COMPRESSED_MODEL, TRAINED_MODEL
from pipeline.compression import loading
from serving.process import ServerProcess
from tests.pipeline_cli import ROOT, pipeline_command, pipeline_env


@dataclass
class ExampleRun:
    name: str
    workdir: Path
    seconds: float
    stages: dict[str, dict]

    @property
    def run_dir(self) -> Path:
        return self.workdir / "runs" / "latest"

    @property
    def stated(self) -> dict:
        """The figures the config states (its evaluate gates)."""
        return yaml.safe_load((ROOT / "pipeline" / "configs" / f"{self.name}.yaml").read_text())["evaluate"]

    def published_model(self):
        """The Keras model export turned into the published SavedModel: the variant compress selected, or the
        trained one when compress kept it (a regression model, or no variant asked for)."""
        compressed = COMPRESSED_MODEL.of_run(self.run_dir)
        return loading.load(compressed if compressed.is_file() else TRAINED_MODEL.of_run(self.run_dir))

    def serve(self) -> tuple[ServerProcess, int]:
        grpc_port = free_port()
        server = ServerProcess(f"--model_name={self.name}", f"--model_base_path={self.workdir / 'repo' / self.name}",
                               f"--port={grpc_port}", log_dir=self.workdir)
        server.wait_available(self.name)
        return server, grpc_port


def run_example(name: str, workdir: Path) -> ExampleRun:
    started = time.perf_counter()
    result = subprocess.run(pipeline_command("--config", name, f"output_dir={workdir / 'runs'}",
                                             f"push.repository={workdir / 'repo'}", "compress.variants=[]"),
                            cwd=ROOT, env=pipeline_env(), capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = json.loads((workdir / "runs" / "latest" / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    print(f"{name}: whole run {seconds:.1f} s, train {stages['train']['wall_s']:.1f} s, "
          f"evaluate {stages['evaluate']['metrics']}")
    return ExampleRun(name, workdir, seconds, stages)


def assert_meets_its_stated_figure(run: ExampleRun) -> None:
    metrics = run.stages["evaluate"]["metrics"]
    if "min_accuracy" in run.stated:
        assert metrics["accuracy"] >= run.stated["min_accuracy"], metrics
    if run.stated.get("max_mae") is not None:
        assert metrics["mae"] <= run.stated["max_mae"], metrics
    assert (run.workdir / "repo" / run.name / "1" / "saved_model.pb").is_file()  # pushed under the config's name


def example_fixture(name: str):
    """A module-scoped fixture: the config `name` run once for the module's tests."""
    @pytest.fixture(scope="module")
    def example(tmp_path_factory) -> ExampleRun:
        return run_example(name, tmp_path_factory.mktemp(name))

    return example
