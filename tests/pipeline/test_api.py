"""The pipeline from Python (pipeline.run, load_run, resume, plan) and the CLI's output modes."""
import json
import shutil
import subprocess
import sys

import pytest

import pipeline
from pipeline.errors import ConfigError, StageFailed
from pipeline.progress import SilentReporter
from tests.pipeline_cli import pipeline_command, pipeline_env


def test_run_returns_what_the_run_recorded(tmp_path):
    result = pipeline.run("digits", {"output_dir": str(tmp_path / "runs"), "data.val_fraction": 0.2},
                          until="validate", reporter=SilentReporter(), stage_output=None)
    assert result.status == "succeeded" and list(result.stages) == ["ingest", "validate"]
    assert result.metrics["validate"]["rows_kept"] == 1797 and result.metrics["ingest"]["rows"] == 1797
    assert result.report.is_file() and result.model_path is None and result.version is None
    again = pipeline.load_run(result.run_id, output_dir=tmp_path / "runs")
    assert again == result == pipeline.load_run(result.run_dir)
    assert json.loads((result.run_dir / "manifest.json").read_text())["overrides"] == [
        f"output_dir={tmp_path / 'runs'}", "data.val_fraction=0.2"]
    assert [state.split()[0] for _, state in pipeline.plan("digits", [f"output_dir={tmp_path / 'runs'}",
                                                                      "data.val_fraction=0.2"], "validate")] == \
        ["cached", "cached"]


def test_bad_overrides_raise_the_clis_config_error():
    with pytest.raises(ConfigError) as info:
        pipeline.run(overrides={"train.epoch": 3, "model.name": "cnnn"})
    assert str(info.value).startswith("Config error in the overrides given to pipeline.run (2 problems):")
    assert "Did you mean 'train.epochs'?" in str(info.value)


def test_a_failed_stage_raises_and_still_gets_a_report_with_its_log(tmp_path):
    source = tmp_path / "rows.csv"
    source.write_text("a,b\n1,2\n")
    with pytest.raises(StageFailed) as info:
        pipeline.run(overrides={"output_dir": str(tmp_path / "runs"), "data.source": str(source)}, until="validate",
                     reporter=SilentReporter(), stage_output=None)
    assert info.value.stage == "ingest" and "label column 'label'" in info.value.reason
    report = (tmp_path / "runs" / info.value.kept.parent.name / "report.html").read_text()
    assert "Stage <b>ingest</b> failed" in report and "Last 40 lines of" in report and "Traceback" in report


def test_pipeline_run_is_the_api_function_and_the_entry_point_module_is_not_for_importing(tmp_path):
    import pipeline.api
    import pipeline.cli  # noqa: F401 -- the command line imported beside the API changes nothing

    assert pipeline.run is pipeline.api.run
    with pytest.raises(ImportError, match="entry point of `python -m pipeline.run`; in Python call pipeline.run"):
        import pipeline.run  # noqa: F401
    assert pipeline.run is pipeline.api.run
    result = pipeline.run(overrides=[f"output_dir={tmp_path}"], until="ingest", reporter=SilentReporter(),
                          stage_output=None)
    assert result.stages["ingest"].status == "ran"


@pytest.mark.parametrize("mode", ["--json", "--quiet"])
def test_cli_modes_for_scripts(tmp_path, mode):
    result = subprocess.run(pipeline_command(mode, "--until", "ingest"), cwd=tmp_path, env=pipeline_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    if mode == "--json":
        summary = json.loads(result.stdout)  # nothing but the summary on stdout
        assert summary["status"] == "succeeded" and summary["stages"]["ingest"]["status"] == "ran"
        assert "[1/1] ingest: running" in result.stderr
    else:
        assert result.stdout.count("\n") == 1 and result.stdout.startswith("Run ") and "succeeded" in result.stdout


def test_help_lists_stages_keys_and_examples():
    result = subprocess.run([sys.executable, "-m", "pipeline.run", "--help"], env=pipeline_env(), capture_output=True,
                            text=True, timeout=60)
    for text in ("stages, in order:", "infra_validate", "main keys", "train.epochs", "examples:", "--json"):
        assert text in result.stdout, text


@pytest.mark.slow  # the CLI trains in a pty
def test_progress_is_animated_on_a_terminal_only(tmp_path):
    plain = subprocess.run(pipeline_command("--until", "validate"), cwd=tmp_path, env=pipeline_env(),
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0 and "\x1b[" not in plain.stdout and "[2/2] validate: ran" in plain.stdout
    if shutil.which("script") is None:
        pytest.skip("util-linux's `script` (a pseudo-terminal) is not installed")
    command = " ".join(pipeline_command("--until", "train", "train.epochs=2", "output_dir=tty-runs"))
    subprocess.run(["script", "-qfc", command, str(tmp_path / "typescript")], cwd=tmp_path, env=pipeline_env(),
                   capture_output=True, timeout=300, check=True)
    screen = (tmp_path / "typescript").read_text(errors="replace")
    assert "\x1b[" in screen and "epochs" in screen and "2/2" in screen and "✓" in screen
