"""The infra_validate stage: the candidate served over REST and gRPC must compute what it computes in
process, and fast enough; the result is what the registry records."""
import json

import numpy as np
import pytest

from pipeline.artifacts import Inputs, RunInfo
from pipeline.config import load_config
from pipeline.runner import stage_view
from pipeline.errors import StageError
from pipeline.stages import infra_validate

pytestmark = pytest.mark.slow


def validate(digits, tmp_path, *overrides):
    cfg = stage_view(load_config(None, ["infra_validate.rows=16", "infra_validate.requests=30", *overrides]),
                     infra_validate)
    validated = digits.workdir / "runs" / "latest" / "validate"
    inputs = {"saved_model": digits.base / "1", "dataset": validated / "dataset", "schema": validated / "schema"}
    return infra_validate.run(cfg, Inputs(inputs, RunInfo("test", {})), tmp_path)


def test_served_predictions_equal_in_process_ones_and_latency_is_measured(digits, tmp_path):
    result = validate(digits, tmp_path)
    assert result["rows"] == 16 and result["requests"] == 30
    assert set(result["max_abs_difference"]) == {"REST", "gRPC"}
    assert all(d <= 1e-5 for d in result["max_abs_difference"].values())
    assert set(result["explain_max_abs_difference"]) == {"REST", "gRPC"}  # the explain signature, asked once each
    assert all(d <= 1e-4 for d in result["explain_max_abs_difference"].values())
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 100
    assert json.loads((tmp_path / "infra_validation" / "report.json").read_text()) == result
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "infra_validation"]  # temp copy gone


def test_the_latency_gate_fails_with_the_numbers(digits, tmp_path):
    with pytest.raises(StageError, match=r"infra_validate: p99 latency \d+\.\d+ ms \(p50 \d+\.\d+ ms, 30 single-row "
                                         r"requests\) is above infra_validate.max_p99_ms=0.001"):
        validate(digits, tmp_path, "infra_validate.max_p99_ms=0.001")


def test_a_disabled_check_says_so(digits, tmp_path):
    assert validate(digits, tmp_path, "infra_validate.enabled=false") == {"skipped": True}


def test_bad_settings_are_config_errors():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="infra_validate.max_p99_ms: expected a positive number, received 0"):
        load_config(None, ["infra_validate.max_p99_ms=0"])
    assert np.isfinite(load_config().infra_validate.tolerance)
