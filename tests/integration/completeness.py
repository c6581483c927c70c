"""Integrated gradients' completeness axiom, checked on a model's explain answer: each row's shares (every input's,
summed) add up to its score's move from the baseline, within 5 % of that move. Computed here from the outputs, not
with pipeline.explain's own figures, so a wrong sum there cannot hide a wrong path here."""
import numpy as np


def shares_errors(answer: dict[str, np.ndarray], shares: list[str], least: float = 0.05) -> np.ndarray:
    """Per row whose score moved at least `least` (below, 5 % of the move is rounding): |sum of the `shares`
    outputs - (score - baseline_score)| / |score - baseline_score|."""
    move = answer["score"].astype(np.float64) - answer["baseline_score"]
    total = sum(answer[name].reshape(len(move), -1).sum(axis=1, dtype=np.float64) for name in shares)
    moved = np.abs(move) >= least
    assert moved.sum() >= len(move) / 2, f"only {moved.sum()} of {len(move)} rows moved {least} from the baseline"
    return np.abs(total[moved] - move[moved]) / np.abs(move[moved])


def assert_shares_add_up(answer: dict[str, np.ndarray], shares: list[str], *, within: float = 1.0,
                         median: float = 0.01) -> None:
    """At least the fraction `within` of the rows within 5 %, and the median row within `median`."""
    errors = shares_errors(answer, shares)
    summary = (f"{np.mean(errors <= 0.05):.3f} of {errors.size} rows within 5 %, median {np.median(errors):.4f}, "
               f"largest {errors.max():.4f}")
    assert np.mean(errors <= 0.05) >= within and np.median(errors) <= median, summary
