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


def test_explain_answers_are_compared_at_the_scale_of_the_score_move_they_share_out():
    """A saturated probability's shares are small beside its move from the baseline: their last digits, which the
    server's thread layout changes, pass; a share that is wrong by a visible part of the move does not."""
    expected = {"attributions": np.array([[0.09, -0.01, 0.0]], np.float32), "score": np.array([0.999], np.float32),
                "baseline_score": np.array([0.1], np.float32), "class_id": np.array([3])}
    move = infra_validate._score_move(expected)
    last_digits = {**expected, "attributions": expected["attributions"] + np.float32(1e-3)}  # as CI once saw
    assert infra_validate._worst_difference(last_digits, expected, 1e-5, "REST (explain)", move) == \
        pytest.approx(1e-3, rel=1e-3)
    wrong = {**expected, "attributions": expected["attributions"] + np.float32(0.01)}
    with pytest.raises(StageError, match=r"over REST \(explain\), output 'attributions' differs from the in-process "
                                         r"model by up to 0.01 \(tolerance 1e-05, and 0.0045 absolute\)"):
        infra_validate._worst_difference(wrong, expected, 1e-5, "REST (explain)", move)
