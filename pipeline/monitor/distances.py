"""TFDV's two drift distances, ported from tensorflow_data_validation/anomalies/metrics.cc (LInftyDistance, and
JensenShannonDivergence on two Histograms with AlignHistograms and RebucketHistogram), so that a figure here is the
one TFDV computes from the same tensorflow_metadata statistics.

- Categorical: the L-infinity distance between the two value distributions, each normalized by its own total
  (kSeparateTotal): the largest difference in any one value's share.
- Numeric: the Jensen–Shannon divergence (log base 2, capped at 1) of the two STANDARD histograms, once they share
  bucket boundaries (a bucket split spreads its count in proportion to width); point buckets (low == high) are
  compared value by value, mass in infinite buckets (values outside the other histogram's range) and NaNs each
  become a bucket the other side has none of.
"""
from __future__ import annotations

import math

from tensorflow_metadata.proto.v0 import statistics_pb2

Histogram = statistics_pb2.Histogram


def l_infinity(a: dict[str, float], b: dict[str, float]) -> tuple[str, float]:
    """(the value whose share differs most, by how much) between two value -> count maps (GetLInftyNorm)."""
    total_a, total_b = sum(a.values()) or 1.0, sum(b.values()) or 1.0  # an empty map has no shares
    worst = ("", 0.0)
    for value in sorted(a.keys() | b.keys()):  # std::map order, and >=: the last of equal differences, as TFDV
        difference = abs(a.get(value, 0.0) / total_a - b.get(value, 0.0) / total_b)
        if difference >= worst[1]:
            worst = (value, difference)
    return worst


def jensen_shannon(a: Histogram, b: Histogram) -> float:
    """JSD(P||Q) = (D(P||M) + D(Q||M)) / 2 with M = (P + Q) / 2, over the aligned, normalized histograms."""
    p, q = (_normalized(counts) for counts in _aligned(a, b))
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return min((_kullback_leibler(p, m) + _kullback_leibler(q, m)) / 2, 1.0)


def _aligned(a: Histogram, b: Histogram) -> tuple[list[float], list[float]]:
    """Both histograms' counts over the same buckets (AlignHistograms)."""
    (a_buckets, a_points, a_infinite), (b_buckets, b_points, b_infinite) = _stripped(a), _stripped(b)
    boundaries_a, boundaries_b = _boundaries(a_buckets), _boundaries(b_buckets)
    if boundaries_a != boundaries_b:
        boundaries = sorted(boundaries_a | boundaries_b)
        a_buckets, b_buckets = _rebucketed(boundaries, a_buckets), _rebucketed(boundaries, b_buckets)
    p, q = [count for _, _, count in a_buckets], [count for _, _, count in b_buckets]
    for point in sorted(a_points.keys() | b_points.keys()):
        p.append(a_points.get(point, 0.0))
        q.append(b_points.get(point, 0.0))
    if a_infinite:
        p.append(a_infinite)
        q.append(0.0)
    if b_infinite:
        p.append(0.0)
        q.append(b_infinite)
    if a.num_nan > 0 or b.num_nan > 0:  # as TFDV: the NaNs of each side in a bucket of their own
        p += [0.0, float(a.num_nan)]
        q += [float(b.num_nan), 0.0]
    return p, q


def _stripped(histogram: Histogram) -> tuple[list[tuple[float, float, float]], dict[float, float], float]:
    """(finite buckets of some width, point buckets' counts by value, the count in buckets with an infinite bound)."""
    buckets, points, infinite = [], {}, 0.0
    for bucket in histogram.buckets:
        low, high, count = bucket.low_value, bucket.high_value, bucket.sample_count
        if not (math.isfinite(low) and math.isfinite(high)):
            infinite += count
        elif low == high:
            points[low] = points.get(low, 0.0) + count
        else:
            buckets.append((low, high, count))
    return buckets, points, infinite


def _boundaries(buckets: list[tuple[float, float, float]]) -> set[float]:
    return {bound for low, high, _ in buckets for bound in (low, high)}


def _rebucketed(boundaries: list[float], buckets: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """`buckets` over `boundaries` (a superset of theirs): empty buckets where they have none, and each of theirs
    split at the boundaries inside it, its count shared in proportion to width (RebucketHistogram)."""
    result, index = [], 0
    for low, high, count in buckets:
        while low > boundaries[index]:
            result.append((boundaries[index], boundaries[index + 1], 0.0))
            index += 1
        covered = []
        while high > boundaries[index]:
            covered.append(boundaries[index])
            index += 1
        covered.append(boundaries[index])
        result += [(start, end, (end - start) / (high - low) * count) for start, end in zip(covered, covered[1:])]
    result += [(boundaries[i], boundaries[i + 1], 0.0) for i in range(index, len(boundaries) - 1)]
    return result


def _normalized(counts: list[float]) -> list[float]:
    total = sum(counts)
    if total == 0:
        raise ValueError("Unable to normalize an empty histogram")
    return [count / total for count in counts]


def _kullback_leibler(p: list[float], q: list[float]) -> float:
    return sum(x * math.log2(x / y) for x, y in zip(p, q) if x > 0 and y > 0)
