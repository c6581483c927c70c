"""A compression report as a text table (for the log) and a plot (for report.html)."""
from __future__ import annotations

from pathlib import Path


def table(report: dict[str, dict], selected: str | None) -> str:
    """One line per variant (accuracy on the validation split, its drop against the trained model on the same rows
    with a 95 % interval); * marks the selected one."""
    lines = [f"{'variant':<22} {'accuracy':>8} {'drop [95% interval]':>22} {'agree':>6} {'sparsity':>8} {'params':>8} "
             f"{'SM gzip':>9} {'tflite':>8} {'tfl gzip':>8} {'b1 ms':>7} {'b32 ms':>7}  gate"]
    for name, r in report.items():
        mark = " *" if name == selected else ""
        drop = f"{r['accuracy_drop']:+.3f} [{r['drop_interval'][0]:+.3f}, {r['drop_interval'][1]:+.3f}]"
        lines.append(
            f"{name + mark:<22} {r['accuracy']:>8.4f} {drop:>22} {r['agreement_with_baseline']:>6.3f} "
            f"{r['sparsity']:>8.3f} {r['params']:>8} {r.get('savedmodel_gzip_bytes', '-'):>9} "
            f"{r.get('tflite_bytes', '-'):>8} {r.get('tflite_gzip_bytes', '-'):>8} "
            f"{r['latency_ms_b1']:>7.3f} {r['latency_ms_b32']:>7.3f}  {r['status'].split(':')[0]}")
    return "\n".join(lines)


def rule(max_drop: float, rows: int) -> str:
    """The gate's rule and its risk, in words: what the report and the log state."""
    return (f"the gate: a variant passes when it loses at most {max_drop:g} of accuracy against the trained model "
            f"on the same {rows} validation rows (compress.max_accuracy_drop); the smallest SavedModel that passes is "
            f"exported. Its risk: one row is {1 / rows:.4f}, and the noise is in the rows where a variant and the "
            f"trained model disagree; the 95 % interval beside each drop says how far the true drop may be from "
            f"the measured one (a variant whose interval reaches well past the limit passed partly by luck).")


def smallest_int8(report: dict[str, dict]) -> dict | None:
    """The smallest int8 .tflite that passes the gate, and how many times smaller (gzip) than the float .tflite of
    the trained model it is; None without both."""
    passing = {name: r for name, r in report.items() if name.endswith("+int8") and r["status"] == "ok"}
    if not passing or "baseline+float" not in report:
        return None
    name = min(passing, key=lambda n: passing[n]["tflite_gzip_bytes"])
    return {"name": name, "tflite_gzip_bytes": passing[name]["tflite_gzip_bytes"],
            "ratio": report["baseline+float"]["tflite_gzip_bytes"] / passing[name]["tflite_gzip_bytes"]}


MARKERS = {"keras": "s", "float": "o", "dynamic": "^", "float16": "v", "int8": "*"}


def plot(report: dict[str, dict], shipped: list[str], max_drop: float, path: Path) -> None:
    """Accuracy against gzip size and against batch-1 latency: a colour per variant, a marker per format
    (legends), the band of accuracies the gate lets through (within `max_drop` of the trained model) shaded, what
    ships ringed, and names written only on the Pareto front (no other point is both smaller or faster and at
    least as accurate), placed so that they do not overlap."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # a Figure object: no pyplot, no global backend (a notebook keeps its own)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FormatStrFormatter, FuncFormatter

    variants = sorted({name.split("+")[0] for name in report})
    colours = dict(zip(variants, colormaps["tab10"].colors))
    points = {name: (r.get("tflite_gzip_bytes", r.get("savedmodel_gzip_bytes")) / 1024, r["latency_ms_b1"],
                     r["accuracy"]) for name, r in report.items()}
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, 2)
    baseline = report["baseline"]["accuracy"]
    top = max(p[2] for p in points.values())
    for axis, (ax, label) in enumerate(zip(axes, ("gzip size, KiB", "batch-1 CPU latency, ms"))):
        ax.axhspan(baseline - max_drop, max(top, baseline) + max_drop / 4, color="tab:green", alpha=0.12, lw=0)
        front = _pareto_front({name: (p[axis], p[2]) for name, p in points.items()})
        for name, p in points.items():
            variant, _, kind = name.partition("+")
            ax.scatter(p[axis], p[2], marker=MARKERS[kind or "keras"], color=colours[variant], s=40)
            if name in shipped:
                ax.scatter(p[axis], p[2], marker="o", facecolors="none", edgecolors="black", s=180, linewidths=1.2)
        ax.set(xlabel=label, ylabel="validation accuracy", xscale="log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 20, 50, 100: not 2x10^1 beside 3x10^1 ...
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
        _label(ax, {name: (points[name][axis], points[name][2]) for name in front})
    handles = [Line2D([], [], color=colours[v], marker="o", linestyle="", label=v) for v in variants]
    handles += [Line2D([], [], color="grey", marker=m, linestyle="", label=k if k != "keras" else "SavedModel")
                for k, m in MARKERS.items()]
    handles += [Line2D([], [], marker="o", markerfacecolor="none", markeredgecolor="black", markersize=11,
                       linestyle="", label="shipped"),
                Patch(color="tab:green", alpha=0.12, label=f"within the gate\n(drop <= {max_drop:g})")]
    fig.legend(handles=handles, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.87, 1))
    fig.savefig(path, dpi=80)


def _label(ax, points: dict[str, tuple[float, float]], size: float = 7) -> None:
    """Write each name beside its point, moved up or down as far as needed for no two names to overlap (a greedy
    placement in display units: names are short, and few)."""
    ax.autoscale_view()
    placed: list[tuple[float, float, float, float]] = []  # x0, y0, x1, y1 of each name written, in points
    to_points = 72 / ax.figure.dpi
    for name, (x, y) in sorted(points.items(), key=lambda item: item[1]):
        px, py = (v * to_points for v in ax.transData.transform((x, y)))
        width, height = 0.6 * size * len(name), size * 1.2
        for dy in (3, -3 - height, 3 + height, -3 - 2 * height, 3 + 2 * height, -3 - 3 * height, 3 + 3 * height):
            box = (px + 4, py + dy, px + 4 + width, py + dy + height)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(name, (x, y), fontsize=size, xytext=(4, dy), textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if abs(dy) > 3 + height else None)


def _pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names whose (cost, accuracy) no other point beats: lower or equal cost and higher or equal accuracy,
    one of them strictly."""
    return {name for name, (cost, accuracy) in points.items()
            if not any(c <= cost and a >= accuracy and (c, a) != (cost, accuracy) for c, a in points.values())}
