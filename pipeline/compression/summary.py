"""A compression report as a text table (for the log) and a plot (for report.html)."""
from __future__ import annotations

from pathlib import Path


def table(report: dict[str, dict], selected: str | None) -> str:
    """One line per variant (accuracy on the validation split); * marks the selected one."""
    lines = [f"{'variant':<22} {'accuracy':>8} {'drop':>6} {'agree':>6} {'sparsity':>8} {'params':>8} "
             f"{'SM gzip':>9} {'tflite':>8} {'tfl gzip':>8} {'b1 ms':>7} {'b32 ms':>7}  gate"]
    for name, r in report.items():
        mark = " *" if name == selected else ""
        lines.append(
            f"{name + mark:<22} {r['accuracy']:>8.4f} {r['accuracy_drop']:>+6.3f} {r['agreement_with_baseline']:>6.3f} "
            f"{r['sparsity']:>8.3f} {r['params']:>8} {r.get('savedmodel_gzip_bytes', '-'):>9} "
            f"{r.get('tflite_bytes', '-'):>8} {r.get('tflite_gzip_bytes', '-'):>8} "
            f"{r['latency_ms_b1']:>7.3f} {r['latency_ms_b32']:>7.3f}  {r['status'].split(':')[0]}")
    return "\n".join(lines)


MARKERS = {"keras": "s", "float": "o", "dynamic": "^", "float16": "v", "int8": "*"}


def plot(report: dict[str, dict], path: Path) -> None:
    """Accuracy against gzip size and against batch-1 latency: a colour per variant, a marker per format
    (legends), and names written only on the Pareto front (no other point is both smaller or faster
    and at least as accurate), so the labels that matter do not overlap the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({name.split("+")[0] for name in report})
    colours = dict(zip(variants, plt.get_cmap("tab10").colors))
    points = {name: (r.get("tflite_gzip_bytes", r.get("savedmodel_gzip_bytes")) / 1024, r["latency_ms_b1"],
                     r["accuracy"]) for name, r in report.items()}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, (ax, label) in enumerate(zip(axes, ("gzip size, KiB", "batch-1 CPU latency, ms"))):
        front = _pareto_front({name: (p[axis], p[2]) for name, p in points.items()})
        for name, p in points.items():
            variant, _, kind = name.partition("+")
            ax.scatter(p[axis], p[2], marker=MARKERS[kind or "keras"], color=colours[variant], s=40)
            if name in front:
                ax.annotate(name, (p[axis], p[2]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel=label, ylabel="validation accuracy", xscale="log")
    handles = [plt.Line2D([], [], color=colours[v], marker="o", linestyle="", label=v) for v in variants]
    handles += [plt.Line2D([], [], color="grey", marker=m, linestyle="", label=k if k != "keras" else "SavedModel")
                for k, m in MARKERS.items()]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (cost, accuracy) no other point beats: lower or equal cost and higher or equal accuracy,
    one of them strictly."""
    return {name for name, (cost, accuracy) in points.items()
            if not any(c <= cost and a >= accuracy and (c, a) != (cost, accuracy) for c, a in points.values())}
