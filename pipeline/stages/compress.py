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
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import COMPRESSION_PLOT, COMPRESSION_REPORT, data_spec, read_schema, read_split
from pipeline.compression import PTQ, QUANTIZED, VARIANTS
from pipeline.errors import StageError


@dataclass(frozen=True)
class Config:
    variants: tuple[str, ...] = ()  # any of pruned, qat, pqat, cluster, distilled; empty = export as trained
    tflite: tuple[str, ...] = ("float", "dynamic", "float16", "int8")  # post-training quantization kinds
    target_sparsity: float = 0.8  # pruned and pqat
    fine_tune_epochs: int = 4
    clusters: int = 16
    student_width: int = 8  # distilled: model.width of the student
    distill_epochs: int = 20  # distilled: the student is trained from scratch, on the teacher's soft labels
    distill_temperature: float = 4.0
    distill_alpha: float = 0.1  # weight of the hard labels; the rest is the teacher's soft labels
    max_accuracy_drop: float = 0.01  # gate: accuracy points a variant may lose against the trained model
    select: str = "smallest_within"  # smallest_within (SavedModel gzip size), or a variant name
    representative_rows: int = 200  # int8 calibration rows from the train split

    def problems(self) -> list[str]:
        found = [f"variants: unknown variant {v!r}; expected any of {', '.join(VARIANTS)}."
                 for v in self.variants if v not in VARIANTS]
        found += [f"tflite: unknown kind {k!r}; expected any of {', '.join(PTQ)}."
                  for k in self.tflite if k not in PTQ]
        if not 0 < self.target_sparsity < 1:
            found.append(f"target_sparsity: expected a number in (0, 1), received {self.target_sparsity}.")
        if self.select not in ("smallest_within", "baseline", *VARIANTS):
            found.append(f"select: expected smallest_within, baseline or one of {', '.join(VARIANTS)}, "
                         f"received {self.select!r}.")
        if not -1 <= self.max_accuracy_drop <= 1:
            found.append(f"max_accuracy_drop: expected a number in [-1, 1], received {self.max_accuracy_drop}.")
        for name in ("fine_tune_epochs", "clusters", "student_width", "distill_epochs", "representative_rows"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        return found


CONFIG = ("seed", "compress", "model", "train.batch_size", "train.learning_rate", "train.strategy")
INPUTS = ("model", "dataset", "schema")
OUTPUTS = ("compressed",)


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    target = out / "compressed"
    (target / "tflite").mkdir(parents=True)
    if not cfg.compress.variants:
        shutil.copy(inputs["model"] / "model.keras", target / "model.keras")
        return {"selected": "baseline"}
    schema = read_schema(inputs["schema"])
    if schema["task"] != "classification":
        raise StageError("compress: variants are measured by accuracy, so they need data.task=classification; "
                         "set compress.variants=[] for regression models.")
    import tf_keras as keras

    from pipeline.compression import summary, variants
    from pipeline.training.distribute import in_process_strategy

    keras.utils.set_random_seed(cfg.seed)
    trained = keras.models.load_model(inputs["model"] / "model.keras")
    data = {split: read_split(inputs["dataset"], split) for split in ("train", "test")}
    try:
        compressed = variants.train_variants(cfg.compress.variants, trained, data["train"], data_spec(schema), cfg,
                                             in_process_strategy(cfg.train.strategy))
    except variants.NothingToCompress as e:
        raise StageError(f"compress.variants: {e}") from None
    keras_variants = {"baseline": trained, **compressed}
    report = _measure(cfg.compress, keras_variants, data, out)
    selected = _select(cfg.compress, report)
    keras_variants[selected].save(target / "model.keras")
    for name in report:
        if name.startswith(selected + "+"):
            shutil.copy(out / "tflite" / f"{name}.tflite", target / "tflite" / f"{name}.tflite")
    COMPRESSION_REPORT.in_output(out).write_text(json.dumps({"baseline": "baseline", "selected": selected,
                                                             "variants": report}, indent=2))
    print(summary.table(report, selected))
    summary.plot(report, COMPRESSION_PLOT.in_output(out))
    return {"selected": selected, "accuracy": report[selected]["accuracy"],
            "savedmodel_gzip_bytes": report[selected]["savedmodel_gzip_bytes"]}


def _measure(c: Config, keras_variants: dict, data: dict, out: Path) -> dict[str, dict]:
    from pipeline.compression import measure
    from pipeline.compression.tflite import to_tflite
    from pipeline.compression.variants import tfmot_scope

    x, y = data["test"]
    representative = data["train"].x[: c.representative_rows]
    (out / "tflite").mkdir(exist_ok=True)
    report = {}
    for name, model in keras_variants.items():
        print(f"compress: measuring {name}", flush=True)
        report[name] = measure.measure_keras(model, x, y)
        for kind in ("int8",) if name in QUANTIZED else c.tflite:
            with tfmot_scope():
                tflite = to_tflite(model, kind, representative)
            (out / "tflite" / f"{name}+{kind}.tflite").write_bytes(tflite)
            report[f"{name}+{kind}"] = measure.measure_tflite(tflite, x, y, report[name])
    baseline = report["baseline"]
    for entry in report.values():
        entry["accuracy_drop"] = baseline["accuracy"] - entry["accuracy"]
        entry["agreement_with_baseline"] = float((entry.pop("predictions") == baseline["predictions"]).mean()) \
            if entry is not baseline else 1.0
    baseline.pop("predictions")
    return report


def _select(c: Config, report: dict[str, dict]) -> str:
    """The keras variant to serve; the gate fails the stage when none qualifies."""
    from pipeline.compression import summary

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
                         f"of the trained model's accuracy:\n{summary.table(report, None)}")
    return min(within, key=lambda n: within[n]["savedmodel_gzip_bytes"])
