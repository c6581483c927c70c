"""Has what the model is asked drifted from what it was trained on? Each feature's serving statistics against the
training statistics the version ships, by TFDV's measures (pipeline.monitor.distances), against thresholds from
the config's `monitor` section; written as drift.json, drift.html (a plot per drifted feature) and the two
statistics protos (training_statistics.pb, serving_statistics.pb: what TFDV and Facets load).
"""
from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.monitor import distances
from pipeline.monitor.statistics import TEXT_VALUES, Statistics, StatisticsList, by_name, value_counts
from pipeline.specs import MonitorConfig

JENSEN_SHANNON, L_INFINITY = "jensen_shannon", "l_infinity"
PLOTTED_VALUES = 15  # a categorical plot shows the values whose share is largest on either side


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical | text
    measure: str  # jensen_shannon | l_infinity
    distance: float
    threshold: float
    drifted: bool
    value: str = ""  # L-infinity: the value (or token) whose share moved most


def kind_of(feature) -> str:
    if feature.HasField("num_stats"):
        return "numeric"
    return "text" if any(c.name == "values" and c.str == TEXT_VALUES for c in feature.custom_stats) else "categorical"


def compare(training: Statistics, serving: Statistics, monitor: MonitorConfig) -> list[FeatureDrift]:
    """Every feature of the training statistics, in their order, against its serving statistics."""
    served = by_name(serving)
    found = []
    for name, feature in by_name(training).items():
        kind = kind_of(feature)
        threshold = monitor.threshold(name, kind == "numeric")
        if kind == "numeric":
            distance, value = distances.jensen_shannon(feature.num_stats.histograms[0],
                                                        served[name].num_stats.histograms[0]), ""
        else:
            value, distance = distances.l_infinity(value_counts(feature), value_counts(served[name]))
        found.append(FeatureDrift(name, kind, JENSEN_SHANNON if kind == "numeric" else L_INFINITY, round(distance, 6),
                                  threshold, distance > threshold, value))
    return found


def write(out: Path, summary: dict, features: list[FeatureDrift], training: Statistics, serving: Statistics) -> None:
    """drift.json, drift.html and both statistics in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    drifted = [f for f in features if f.drifted]
    result = {**summary, "features": [asdict(f) for f in features],
              "totals": {"features": len(features), "drifted": len(drifted)},
              "drifted": [f.feature for f in drifted]}
    (out / "drift.json").write_text(json.dumps(result, indent=2))
    for name, statistics in (("training", training), ("serving", serving)):
        (out / f"{name}_statistics.pb").write_bytes(StatisticsList(datasets=[statistics]).SerializeToString())
    (out / "drift.html").write_text(_page(result, drifted, by_name(training), by_name(serving)))


def table(features: list[FeatureDrift], limit: int = 10) -> str:
    """The features nearest to (or past) their threshold, one line each."""
    ranked = sorted(features, key=lambda f: f.distance / f.threshold, reverse=True)[:limit]
    lines = [f"{'feature':<24} {'kind':<12} {'measure':<15} {'distance':>9} {'threshold':>9}  drifted"]
    lines += [f"{f.feature[:24]:<24} {f.kind:<12} {f.measure:<15} {f.distance:>9.4f} {f.threshold:>9.4f}  "
              f"{'YES' + (f' ({f.value!r} moved most)' if f.value else '') if f.drifted else 'no'}" for f in ranked]
    if len(features) > limit:
        lines.append(f"... and {len(features) - limit} more features, further from their thresholds (drift.json)")
    return "\n".join(lines)


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}table{border-collapse:collapse;"
         "font-size:13px}td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}th{background:#f5f5f5}"
         ".l{text-align:left}.drifted{color:#b00;font-weight:bold}img{max-width:100%}")


def _page(result: dict, drifted: list[FeatureDrift], training: dict, serving: dict) -> str:
    title = f"Drift of {result['model']} version {result['version']}"
    rows = "".join(
        f"<tr class='{'drifted' if f['drifted'] else ''}'><td class=l>{html.escape(f['feature'])}</td>"
        f"<td class=l>{f['kind']}</td><td class=l>{f['measure']}</td><td>{f['distance']:.4f}</td>"
        f"<td>{f['threshold']:.4f}</td><td class=l>{'yes' if f['drifted'] else 'no'}</td></tr>"
        for f in sorted(result["features"], key=lambda f: f["distance"] / f["threshold"], reverse=True))
    plots = "".join(f"<h3>{html.escape(f.feature)}: {f.measure} {f.distance:.4f} &gt; {f.threshold}</h3>"
                    f"{_plot(f, training[f.feature], serving[f.feature])}" for f in drifted)
    verdict = (f"<p class=drifted>{len(drifted)} of {len(result['features'])} features drifted.</p>" if drifted else
               f"<p>No feature drifted ({len(result['features'])} compared).</p>")
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{STYLE}</style>"
            f"<h1>{html.escape(title)}</h1><p>{result['rows']} logged rows against the training statistics the "
            f"version ships.</p>{verdict}{plots}<h2>Every feature</h2><table><tr><th class=l>feature</th>"
            f"<th class=l>kind</th><th class=l>measure</th><th>distance</th><th>threshold</th><th class=l>drifted</th>"
            f"</tr>{rows}</table>")


def _plot(drift: FeatureDrift, training, serving) -> str:
    """Training and serving distributions of one feature side by side, as shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if drift.kind == "numeric":
        labels, train_shares, serving_shares = _bucket_shares(training, serving)
    else:
        labels, train_shares, serving_shares = _value_shares(value_counts(training), value_counts(serving))
    positions = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.bar(positions - 0.2, train_shares, 0.4, label="training")
    ax.bar(positions + 0.2, serving_shares, 0.4, label="serving")
    ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("share of values")
    ax.legend(loc="upper center", ncols=2, bbox_to_anchor=(0.5, 1.18), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return f"<img alt='{html.escape(drift.feature)}' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _bucket_shares(training, serving) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Both histograms over the serving histogram's buckets (the training ones, plus values outside them)."""
    train_counts = {(b.low_value, b.high_value): b.sample_count for b in training.num_stats.histograms[0].buckets}
    buckets = [(b.low_value, b.high_value) for b in serving.num_stats.histograms[0].buckets]
    serving_counts = [b.sample_count for b in serving.num_stats.histograms[0].buckets]
    labels = [f"< {high:.3g}" if low == -np.inf else f"> {low:.3g}" if high == np.inf else f"{low:.3g}–{high:.3g}"
              for low, high in buckets]
    train = np.array([train_counts.get(b, 0.0) for b in buckets])
    return labels, train / max(train.sum(), 1), np.array(serving_counts) / max(sum(serving_counts), 1)


def _value_shares(training: dict[str, float], serving: dict[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    train_total, serving_total = max(sum(training.values()), 1), max(sum(serving.values()), 1)
    values = sorted(training.keys() | serving.keys(),
                    key=lambda v: -max(training.get(v, 0) / train_total, serving.get(v, 0) / serving_total))
    values = values[:PLOTTED_VALUES]
    return ([v[:20] for v in values], np.array([training.get(v, 0) / train_total for v in values]),
            np.array([serving.get(v, 0) / serving_total for v in values]))
