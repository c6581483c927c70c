"""Compress the trained model into the variants the config asks for, measure each on the test
split, and choose the one to export by a rule: the smallest within the allowed accuracy drop.

Keras variants (pruned, qat, pqat, cluster, distilled) can be served as SavedModels; each is also
converted to TFLite (post-training float / dynamic / float16 / int8; QAT variants to int8 only).
A SavedModel of a pruned or QAT model is still float32: size wins show in gzip and TFLite, speed
wins only in TFLite. report.json, a table and a plot say so with numbers.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from models import build_model
from pipeline import compression, variant_metrics
from pipeline.distribute import in_process_strategy
from pipeline.errors import StageError
from pipeline.stages.train import data_spec

VARIANTS = ("pruned", "qat", "pqat", "cluster", "distilled")
QUANTIZED = ("qat", "pqat")  # already quantization-aware: converted to int8 only


@dataclass(frozen=True)
class Config:
    variants: tuple[str, ...] = ()  # any of pruned, qat, pqat, cluster, distilled; empty = export as trained
    tflite: tuple[str, ...] = ("float", "dynamic", "float16", "int8")  # post-training quantization kinds
    target_sparsity: float = 0.8  # pruned and pqat
    fine_tune_epochs: int = 4
    clusters: int = 16
    student_width: int = 8  # distilled: model.width of the student
    distill_temperature: float = 4.0
    distill_alpha: float = 0.1  # weight of the hard labels; the rest is the teacher's soft labels
    max_accuracy_drop: float = 0.01  # gate: accuracy points a variant may lose against the trained model
    select: str = "smallest_within"  # smallest_within (SavedModel gzip size), or a variant name
    representative_rows: int = 200  # int8 calibration rows from the train split

    def problems(self) -> list[str]:
        found = [f"variants: unknown variant {v!r}; expected any of {', '.join(VARIANTS)}."
                 for v in self.variants if v not in VARIANTS]
        found += [f"tflite: unknown kind {k!r}; expected any of {', '.join(compression.PTQ)}."
                  for k in self.tflite if k not in compression.PTQ]
        if not 0 < self.target_sparsity < 1:
            found.append(f"target_sparsity: expected a number in (0, 1), received {self.target_sparsity}.")
        if self.select not in ("smallest_within", "baseline", *VARIANTS):
            found.append(f"select: expected smallest_within, baseline or one of {', '.join(VARIANTS)}, "
                         f"received {self.select!r}.")
        if not -1 <= self.max_accuracy_drop <= 1:
            found.append(f"max_accuracy_drop: expected a number in [-1, 1], received {self.max_accuracy_drop}.")
        for name in ("fine_tune_epochs", "clusters", "student_width", "representative_rows"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        return found


CONFIG = ("compress", "model", "train")
INPUTS = ("model", "dataset", "schema")
OUTPUTS = ("compressed",)


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    trained = keras.models.load_model(inputs["model"] / "model.keras")
    target = out / "compressed"
    (target / "tflite").mkdir(parents=True)
    if not cfg.compress.variants:
        shutil.copy(inputs["model"] / "model.keras", target / "model.keras")
        return {"selected": "baseline"}
    schema = json.loads((inputs["schema"] / "schema.json").read_text())
    if schema["task"] != "classification":
        raise StageError("compress: variants are measured by accuracy, so they need data.task=classification; "
                         "set compress.variants=[] for regression models.")
    data = {split: np.load(inputs["dataset"] / f"{split}.npz") for split in ("train", "test")}
    keras_variants = {"baseline": trained, **_train_variants(cfg, trained, data["train"], schema)}
    report = _measure(cfg.compress, keras_variants, data, out)
    selected = _select(cfg.compress, report)
    keras_variants[selected].save(target / "model.keras")
    for name in report:
        if name.startswith(selected + "+"):
            shutil.copy(out / "tflite" / f"{name}.tflite", target / "tflite" / f"{name}.tflite")
    (out / "report.json").write_text(json.dumps({"baseline": "baseline", "selected": selected,
                                                 "variants": report}, indent=2))
    print(_table(report, selected))
    _plot(report, out / "compression.png")
    return {"selected": selected, "accuracy": report[selected]["accuracy"],
            "savedmodel_gzip_bytes": report[selected]["savedmodel_gzip_bytes"]}


def _train_variants(cfg, trained: keras.Model, train: dict, schema: dict) -> dict[str, keras.Model]:
    c = cfg.compress
    steps = c.fine_tune_epochs * int(np.ceil(len(train["y"]) / cfg.train.batch_size))
    fit = dict(x=train["x"], y=train["y"], batch_size=cfg.train.batch_size, epochs=c.fine_tune_epochs, verbose=0)
    variants = {}
    # TFMOT wrappers are created and fine-tuned in the training strategy's scope.
    with in_process_strategy(cfg.train.strategy).scope(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in c.variants:
            print(f"compress: {name}", flush=True)
            try:
                if name in ("pruned", "pqat") and "pruned" not in variants:
                    variants["pruned"] = _fine_tune(compression.prune(trained, c.target_sparsity, steps), cfg, fit,
                                                    [tfmot.sparsity.keras.UpdatePruningStep()])
                if name == "qat":
                    variants["qat"] = _fine_tune(compression.quantize_aware(trained), cfg, fit)
                elif name == "pqat":
                    variants["pqat"] = _fine_tune(compression.quantize_aware(variants["pruned"], True), cfg, fit)
                elif name == "cluster":
                    variants["cluster"] = _fine_tune(compression.cluster(trained, c.clusters), cfg, fit)
                elif name == "distilled":
                    variants["distilled"] = _distill(cfg, trained, train, schema)
            except compression.NothingToCompress as e:
                raise StageError(f"compress.variants has {name!r}, but {e}") from None
        for warning in caught:
            print(f"compress: warning: {warning.message}")
    return {name: variants[name] for name in c.variants}


def _fine_tune(model: keras.Model, cfg, fit: dict, callbacks: list | None = None) -> keras.Model:
    model.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate / 3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(**fit, callbacks=callbacks or [])
    return compression.strip(model)


def _distill(cfg, teacher: keras.Model, train: dict, schema: dict) -> keras.Model:
    student = build_model(replace(cfg.model, width=cfg.compress.student_width), data_spec(schema))
    distiller = compression.Distiller(student, teacher, cfg.compress.distill_temperature, cfg.compress.distill_alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(cfg.train.learning_rate))
    distiller.fit(train["x"], train["y"], batch_size=cfg.train.batch_size, epochs=cfg.train.epochs, verbose=0)
    return student


def _measure(c: Config, keras_variants: dict[str, keras.Model], data: dict, out: Path) -> dict[str, dict]:
    x, y = data["test"]["x"], data["test"]["y"]
    representative = data["train"]["x"][: c.representative_rows]
    (out / "tflite").mkdir(exist_ok=True)
    report = {}
    for name, model in keras_variants.items():
        print(f"compress: measuring {name}", flush=True)
        report[name] = variant_metrics.measure_keras(model, x, y)
        for kind in ("int8",) if name in QUANTIZED else c.tflite:
            with compression.tfmot_scope():
                tflite = compression.to_tflite(model, kind, representative)
            (out / "tflite" / f"{name}+{kind}.tflite").write_bytes(tflite)
            report[f"{name}+{kind}"] = variant_metrics.measure_tflite(tflite, x, y, report[name])
    baseline = report["baseline"]
    for entry in report.values():
        entry["accuracy_drop"] = baseline["accuracy"] - entry["accuracy"]
        entry["agreement_with_baseline"] = float((entry.pop("predictions") == baseline["predictions"]).mean()) \
            if entry is not baseline else 1.0
    baseline.pop("predictions")
    return report


def _select(c: Config, report: dict[str, dict]) -> str:
    """The keras variant to serve; the gate fails the stage when none qualifies."""
    servable = {n: r for n, r in report.items() if r["format"] == "keras"}
    if c.select != "smallest_within":
        if c.select not in servable:
            raise StageError(f"compress.select={c.select!r}, but that variant was not produced; "
                             f"produced: {', '.join(servable)}.")
        candidates = {c.select: servable[c.select]}
    else:
        candidates = {n: r for n, r in servable.items() if n != "baseline"}
    within = {n: r for n, r in candidates.items() if r["accuracy_drop"] <= c.max_accuracy_drop}
    if not within:
        raise StageError(f"no compressed variant is within compress.max_accuracy_drop={c.max_accuracy_drop} "
                         f"of the trained model's accuracy:\n{_table(report, None)}")
    return min(within, key=lambda n: within[n]["savedmodel_gzip_bytes"])


def _table(report: dict[str, dict], selected: str | None) -> str:
    lines = [f"{'variant':<22} {'accuracy':>8} {'drop':>6} {'agree':>6} {'sparsity':>8} {'params':>8} "
             f"{'SM gzip':>9} {'tflite':>8} {'tfl gzip':>8} {'b1 ms':>7} {'b32 ms':>7}"]
    for name, r in report.items():
        mark = " *" if name == selected else ""
        lines.append(
            f"{name + mark:<22} {r['accuracy']:>8.4f} {r['accuracy_drop']:>+6.3f} {r['agreement_with_baseline']:>6.3f} "
            f"{r['sparsity']:>8.3f} {r['params']:>8} {r.get('savedmodel_gzip_bytes', '-'):>9} "
            f"{r.get('tflite_bytes', '-'):>8} {r.get('tflite_gzip_bytes', '-'):>8} "
            f"{r['latency_ms_b1']:>7.3f} {r['latency_ms_b32']:>7.3f}")
    return "\n".join(lines)


def _plot(report: dict[str, dict], path: Path) -> None:
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
    axes[0].set(xlabel="gzip size, KiB (TFLite, or SavedModel for squares)", ylabel="test accuracy", xscale="log")
    axes[1].set(xlabel="batch-1 CPU latency, ms", ylabel="test accuracy", xscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
