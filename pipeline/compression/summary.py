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


def plot(report: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in report.items():
        size = r.get("tflite_gzip_bytes", r.get("savedmodel_gzip_bytes")) / 1024
        marker = "s" if r["format"] == "keras" else "o"
        axes[0].scatter(size, r["accuracy"], marker=marker)
        axes[0].annotate(name, (size, r["accuracy"]), fontsize=7)
        axes[1].scatter(r["latency_ms_b1"], r["accuracy"], marker=marker)
        axes[1].annotate(name, (r["latency_ms_b1"], r["accuracy"]), fontsize=7)
    axes[0].set(xlabel="gzip size, KiB (TFLite, or SavedModel for squares)", ylabel="validation accuracy",
                xscale="log")
    axes[1].set(xlabel="batch-1 CPU latency, ms", ylabel="validation accuracy", xscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
