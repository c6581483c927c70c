"""Compress the trained model into the variants the config asks for, measure each on the validation
split, and choose the one to export by a rule: the smallest within the allowed accuracy drop.

Keras variants (pruned, qat, pqat, cluster, distilled) can be served as SavedModels; each is also
converted to TFLite (post-training float / dynamic / float16 / int8; QAT variants to int8 only).
Variants and TFLite kinds the model does not support are found before any fine-tuning and skipped
with one line each. Every exported artefact (the selected variant and its .tflite files) passes the
accuracy-drop gate on the validation split; one that does not is reported as failed and not shipped.
The selected variant's test accuracy is measured once, as the held-out figure. A SavedModel of a
pruned or QAT model is still float32: size wins show in gzip and TFLite, speed wins only in TFLite.
Regression models are exported as trained (variants are judged by accuracy), with a note.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from models import import_model_code, model_code_files
from pipeline import specs
from pipeline.artifacts import (COMPRESSED_MODEL, COMPRESSED_TFLITE, COMPRESSION_PLOT, COMPRESSION_REPORT, SELECTION,
                                TRAINED_MODEL, Inputs, data_spec, read_schema, read_split, write_json)
from pipeline.errors import StageError
from pipeline.specs import QUANTIZED
from pipeline.training.batch import with_batch_for
from pipeline.views import CompressView


SPEC = specs.COMPRESS


def external_inputs(cfg: CompressView) -> list[Path]:
    """A user builder's file: its classes are rebuilt from it when the model loads."""
    return model_code_files(cfg.model.name)


def run(cfg: CompressView, inputs: Inputs, out: Path) -> dict:
    COMPRESSED_TFLITE.in_output(out).mkdir(parents=True)
    schema = read_schema(inputs["schema"])
    if not cfg.compress.variants or schema["task"] != "classification":
        if cfg.compress.variants:
            print("compress: skipped: variants are judged by accuracy, and this is a regression model; it is "
                  "exported as trained (set compress.variants=[] to silence this).")
        shutil.copy(TRAINED_MODEL.in_artefact(inputs["model"]), COMPRESSED_MODEL.in_output(out))
        write_json(SELECTION, out, {"selected": "baseline"})
        return {"selected": "baseline"}
    import tf_keras as keras

    from pipeline.compression import loading, summary, variants
    from pipeline.compression.tflite import ConversionFailed, to_tflite
    from pipeline.training.distribute import in_process_strategy

    cfg = with_batch_for(cfg, schema["rows"]["train"], "compress")
    c = cfg.compress
    keras.utils.set_random_seed(cfg.seed)
    import_model_code(cfg.model.name)
    trained = loading.load(TRAINED_MODEL.in_artefact(inputs["model"]), compile=True)
    data = {split: read_split(inputs["dataset"], split) for split in ("train", "val", "test")}
    representative = data["train"].x[: c.representative_rows]
    baseline_tflite, skipped = {}, {}
    for kind in c.tflite:  # what does not convert now never will: find out before fine-tuning
        try:
            baseline_tflite[kind] = to_tflite(trained, kind, representative)
        except ConversionFailed as e:
            skipped[f"+{kind}"] = f"TFLite cannot convert this model to {kind} ({e})"
    skipped |= variants.unsupported(c.variants, trained, c.clusters, representative)
    for name, reason in skipped.items():
        print(f"compress: warning: skipping {name}: {reason}")
    names = tuple(v for v in c.variants if v not in skipped)
    compressed = variants.train_variants(names, trained, data["train"], data["val"].x, data_spec(schema), cfg,
                                         in_process_strategy(cfg.train.strategy))
    kinds = tuple(k for k in c.tflite if f"+{k}" not in skipped)
    report = _measure(c, {"baseline": trained, **compressed}, kinds, baseline_tflite, data["val"], representative,
                      out, cfg.seed)
    selected = _select(c, report, skipped)
    model = variants.savable(({"baseline": trained} | compressed)[selected])
    model.save(COMPRESSED_MODEL.in_output(out))
    write_json(SELECTION, out, {"selected": selected})
    shipped = [n for n, r in report.items() if n.startswith(selected + "+") and r["status"] == "ok"]
    for name in shipped:
        shutil.copy(out / "tflite" / f"{name}.tflite", COMPRESSED_TFLITE.in_output(out) / f"{name}.tflite")
    test = data["test"]
    held_out, trained_held_out = (float((m.predict(test.x, batch_size=256, verbose=0).argmax(axis=1) == test.y).mean())
                                  for m in (model, trained))
    int8 = summary.smallest_int8(report)
    write_json(COMPRESSION_REPORT, out, {
        "measured_on": "val", "rows": len(data["val"].y), "max_accuracy_drop": c.max_accuracy_drop,
        "baseline": "baseline", "selected": selected, "shipped_tflite": shipped, "selected_test_accuracy": held_out,
        "trained_test_accuracy": trained_held_out, "smallest_int8_within": int8, "skipped": skipped,
        "variants": report})
    print(summary.table(report, selected))
    print(f"compress: {summary.rule(c.max_accuracy_drop, len(data['val'].y))}")
    print(f"compress: selected {selected} (validation accuracy {report[selected]['accuracy']:.4f}); "
          f"held-out test accuracy {held_out:.4f} (the trained model's: {trained_held_out:.4f}); shipped .tflite: "
          f"{', '.join(shipped) or 'none'}")
    if int8:
        print(f"compress: the smallest int8 .tflite within the gate, {int8['name']}, is {int8['ratio']:.1f}x smaller "
              f"(gzip) than the float .tflite")
    summary.plot(report, [selected, *shipped], c.max_accuracy_drop, COMPRESSION_PLOT.in_output(out))
    return {"selected": selected, "val_accuracy": report[selected]["accuracy"], "test_accuracy": held_out,
            "savedmodel_gzip_bytes": report[selected]["savedmodel_gzip_bytes"]}


def _measure(c, keras_variants: dict, kinds: tuple[str, ...], baseline_tflite: dict[str, bytes], val,
             representative, out: Path, seed: int) -> dict[str, dict]:
    """Each variant and its .tflite files measured on the validation split, with its accuracy drop against
    the trained model measured on the same rows (and its 95 % interval), and whether it passes the gate: a drop
    of at most compress.max_accuracy_drop (status "ok", or "failed: <why>")."""
    from pipeline.compression import measure
    from pipeline.compression.tflite import to_tflite

    (out / "tflite").mkdir(exist_ok=True)
    report = {}
    for name, model in keras_variants.items():
        print(f"compress: measuring {name}", flush=True)
        report[name] = measure.measure_keras(model, val.x, val.y)
        for kind in ("int8",) if name in QUANTIZED else kinds:
            tflite = baseline_tflite[kind] if name == "baseline" else to_tflite(model, kind, representative)
            (out / "tflite" / f"{name}+{kind}.tflite").write_bytes(tflite)
            report[f"{name}+{kind}"] = measure.measure_tflite(tflite, val.x, val.y, report[name])
    baseline_predictions = report["baseline"]["predictions"]
    for name, entry in report.items():
        predictions = entry.pop("predictions")
        entry |= measure.paired_drop(baseline_predictions == val.y, predictions == val.y, seed)
        entry["agreement_with_baseline"] = float((predictions == baseline_predictions).mean())
        entry["status"] = "ok" if entry["accuracy_drop"] <= c.max_accuracy_drop else (
            f"failed: validation accuracy {entry['accuracy']:.4f} is {entry['accuracy_drop']:.4f} below the trained "
            f"model's on the same rows ({entry['rows_lost']} lost, {entry['rows_gained']} gained; "
            f"compress.max_accuracy_drop={c.max_accuracy_drop})"
            + ("; int8 keeps one scale per tensor, so inputs or activations of very different ranges lose "
               "precision" if name.endswith("+int8") else ""))
    return report


def _select(c, report: dict[str, dict], skipped: dict[str, str]) -> str:
    """The keras variant to serve; the gate fails the stage when none qualifies."""
    from pipeline.compression import summary

    servable = {n: r for n, r in report.items() if r["format"] == "keras"}
    if c.select != "smallest_within":
        if c.select not in servable:
            why = f"it was skipped: {skipped[c.select]}" if c.select in skipped else "that variant was not produced"
            raise StageError(f"compress.select={c.select!r}, but {why}; produced: {', '.join(servable)}.")
        candidates = {c.select: servable[c.select]}
    else:
        candidates = {n: r for n, r in servable.items() if n != "baseline"}
    within = {n: r for n, r in candidates.items() if r["status"] == "ok"}
    if not within:
        raise StageError(f"no compressed variant is within compress.max_accuracy_drop={c.max_accuracy_drop} "
                         f"of the trained model's validation accuracy:\n{summary.table(report, None)}")
    return min(within, key=lambda n: within[n]["savedmodel_gzip_bytes"])
