"""Check every row against the schema, set bad rows aside with the reason, compute statistics.

Rejected rows go to rejects.csv (file row, split, reason), never silently dropped; too many of
them fail the stage, since then the data (or its declared schema) is wrong, not a few rows.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline import images, specs
from pipeline.artifacts import (ENCODED_TEST, REJECTS, SCHEMA, SPLITS, TRAIN_STATISTICS, Inputs, read_encoded,
                                read_examples, write_json, write_split)
from pipeline.errors import StageError
from pipeline.monitor.statistics import DatasetCounts, StatisticsList
from pipeline.views import ValidateView


SPEC = specs.VALIDATE


def run(cfg: ValidateView, inputs: Inputs, out: Path) -> dict:
    raw, meta = read_examples(inputs["examples"])
    x, labels, split = raw["x"], raw["label"], raw["split"]
    text = meta["kind"] == "text"
    images_kind = meta["kind"] == "image"
    reasons = _reject_reasons(x, labels, raw["problem"], meta, cfg.data.classes)
    rejected = reasons != ""
    _write_rejects(REJECTS.in_output(out), raw["row"], split, reasons)
    fraction = float(rejected.mean()) if len(x) else 1.0
    if fraction > cfg.validate.max_reject_fraction:
        examples = "; ".join(f"row {r}: {why}" for r, why in zip(raw["row"][rejected][:3], reasons[rejected][:3]))
        raise StageError(
            f"{rejected.sum()} of {len(x)} rows ({fraction:.1%}) break the schema, more than "
            f"validate.max_reject_fraction={cfg.validate.max_reject_fraction}. First: {examples}. "
            f"All reasons are in rejects.csv."
        )
    keep = ~rejected
    classes, y = _targets(labels[keep], meta["task"])
    x, split = x[keep], split[keep]
    if meta["task"] == "classification":
        _check_classes(classes, y, split, meta["labels_from"])
    _warn_of_small_splits(split)
    categories = raw["categorical"][keep] if "categorical" in raw else None
    vocabularies = {}
    if categories is not None:  # learnt from the train split only; a value first seen later is index 0
        vocabularies = {name: _vocabulary(categories[split == 0, j]) for j, name in enumerate(meta["categorical"])}
        x = np.concatenate([x, lookup(categories, list(vocabularies.values()))], axis=1)
    dataset = out / "dataset"
    dataset.mkdir(parents=True)
    for i, name in enumerate(SPLITS):
        strings = {} if categories is None else {"categorical": categories[split == i]}
        write_split(dataset, name, x[split == i], y[split == i], **strings)
    encoded = read_encoded(inputs["examples"])
    if encoded is not None:  # image files as sent by clients, for the test rows kept
        test_rows = np.flatnonzero(keep)[split == SPLITS.index("test")]
        files = images.unpack(encoded)
        np.savez(dataset / ENCODED_TEST, **images.pack([files[i] for i in test_rows]))
    schema = _text_schema(meta, x[split == 0], cfg.data) if text else \
        _schema(meta, x[split == 0], raw["x"], vocabularies, categories)
    origin = {"origin": meta["origin"]} if "origin" in meta else {}  # rows from request logs: the version records it
    write_json(SCHEMA, out, schema | _label_schema(meta, classes, y, split, int(rejected.sum())) | origin)
    if not images_kind:
        train = {"x": x[split == 0], **({} if categories is None else
                                        {name: categories[split == 0, j] for j, name in enumerate(vocabularies)})}
        _write_train_statistics(TRAIN_STATISTICS.in_output(out), schema, train)
    print(f"validate: kept {keep.sum()} rows, rejected {rejected.sum()} ({fraction:.1%})")
    return {"rows_kept": int(keep.sum()), "rows_rejected": int(rejected.sum())}


def _write_train_statistics(path: Path, schema: dict, train: dict[str, np.ndarray]) -> None:
    """The train split's per-feature statistics (histograms, value counts) as TFDV writes them: what served
    requests are compared with (python -m pipeline.monitor drift). Image pixels are not compared, so not kept."""
    counts = DatasetCounts.for_training(schema)
    counts.add(train)
    path.write_bytes(StatisticsList(datasets=[counts.statistics("train")]).SerializeToString())


def _check_classes(classes: list[str], y: np.ndarray, split: np.ndarray, labels_from: str) -> None:
    """A classifier needs two classes or more, and each in every split (the split is stratified, so a class of 3
    rows or more is): otherwise it would learn nothing, or be judged on classes it never saw."""
    counts = {name: int((y == k).sum()) for k, name in enumerate(classes)}
    if len(classes) < 2:
        found = ", ".join(f"{name!r} ({n} rows)" for name, n in counts.items()) or "nothing"
        raise StageError(f"classification needs at least 2 classes; {labels_from} holds only {found}. Check that "
                         f"data.label names the column to predict, or use data with more classes.")
    short = []
    for k, name in enumerate(classes):
        missing = [s for i, s in enumerate(SPLITS) if not ((y == k) & (split == i)).any()]
        if missing:
            short.append(f"{name!r} has {counts[name]} row(s) and none in the {' and '.join(missing)} split")
    if short:
        raise StageError(f"every class needs rows in the train, val and test splits (at least 3 rows each); "
                         f"{'; '.join(short)}. Add rows of these classes, or leave them out with data.classes="
                         f"[{', '.join(n for n in classes if counts[n] >= 3)}] (their rows are then rejected).")


SMALL_SPLIT_ROWS = 30  # below this, one row moves a split's accuracy by more than 3 points


def _warn_of_small_splits(split: np.ndarray) -> None:
    rows = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    small = {name: n for name, n in rows.items() if 0 < n < SMALL_SPLIT_ROWS}
    if small:
        print(f"validate: warning: small splits ({', '.join(f'{name} {n} rows' for name, n in small.items())}): one "
              f"row moves accuracy on them by {' / '.join(f'{100 / n:.1f}' for n in small.values())} points, so "
              f"figures measured on them are coarse and a gate on them is partly luck. More rows give truer figures.")


def _reject_reasons(x: np.ndarray, labels: np.ndarray, problems: np.ndarray, meta: dict,
                    classes: tuple[str, ...]) -> np.ndarray:
    reasons = problems.astype(object)
    names = meta["feature_names"]
    if meta["kind"] == "text":
        reasons[(reasons == "") & (x == "")] = f"empty text in '{names[0]}'"
    for i in np.flatnonzero((reasons == "") & ~_finite_rows(x)):
        column = int(np.flatnonzero(~np.isfinite(x[i]))[0])
        reasons[i] = f"'{names[column]}' is {x[i, column]} (missing or not finite)"
    for i in np.flatnonzero(reasons == ""):
        if not labels[i]:
            reasons[i] = "missing label"
        elif meta["task"] == "regression" and not _is_number(labels[i]):
            reasons[i] = f"label {str(labels[i])!r} is not a number (data.task is regression)"
        elif classes and labels[i] not in classes:
            reasons[i] = f"label {str(labels[i])!r} is not one of data.classes {list(classes)}"
    return reasons.astype(str)


def _finite_rows(x: np.ndarray) -> np.ndarray:
    return np.isfinite(x).all(axis=1) if x.dtype.kind == "f" else np.ones(len(x), bool)


def _is_number(text: str) -> bool:
    try:
        return np.isfinite(float(text))
    except ValueError:
        return False


def _targets(labels: np.ndarray, task: str) -> tuple[list[str], np.ndarray]:
    """Class names and class indices (classification), or float values (regression)."""
    if task == "regression":
        return [], labels.astype(np.float32)
    names = sorted(set(labels.tolist()))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    index = {name: i for i, name in enumerate(names)}
    return names, np.array([index[label] for label in labels], dtype=np.int64)


def _write_rejects(path: Path, rows: np.ndarray, split: np.ndarray, reasons: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "split", "reason"])
        for i in np.flatnonzero(reasons != ""):
            writer.writerow([rows[i].item(), SPLITS[split[i]], reasons[i]])


def _text_schema(meta, x_train, data) -> dict:
    """The vocabulary adapted on the train split: the model's TextVectorization layer holds it."""
    import tf_keras as keras

    vectorize = keras.layers.TextVectorization(max_tokens=data.max_tokens)
    vectorize.adapt(x_train)
    vocabulary = vectorize.get_vocabulary(include_special_tokens=False)
    print(f"validate: text vocabulary of {len(vocabulary)} tokens adapted on {len(x_train)} train rows")
    return {"source": meta["source"], "kind": "text", "input_shape": [],
            "features": [{"name": meta["feature_names"][0], "dtype": "string", "mean": 0.0, "std": 1.0}],
            "text": {"vocabulary": vocabulary, "sequence_length": data.sequence_length}}


def _vocabulary(values: np.ndarray) -> list[str]:
    """A categorical column's values, most frequent first (ties in alphabetical order); an empty cell is a missing
    value, not one of them: it is read as index 0, like a value the train split never had, in training and serving."""
    names, counts = np.unique(values[values != ""], return_counts=True)
    return [str(names[i]) for i in sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))]


def lookup(categories: np.ndarray, vocabularies: list[list[str]]) -> np.ndarray:
    """Category strings [rows, columns] -> float32 indices: 1 + the position in the column's vocabulary, 0 when
    the value is not in it (the exported model computes the same from the strings clients send)."""
    indices = np.zeros(categories.shape, np.float32)
    for j, vocabulary in enumerate(vocabularies):
        position = {value: k + 1 for k, value in enumerate(vocabulary)}
        indices[:, j] = [position.get(v, 0) for v in categories[:, j]]
    return indices


def _schema(meta, x_train, x_all, vocabularies: dict[str, list[str]], categories: np.ndarray | None) -> dict:
    """Per feature: numbers' min, max, mean and std on the train split and missing cells in all rows; categories'
    vocabulary (from the train split), every kept row's count of each value, and missing cells."""
    missing = (~np.isfinite(x_all)).sum(axis=0)
    features = [
        {
            "name": name,
            "dtype": "float32",
            "min": float(x_train[:, j].min()),
            "max": float(x_train[:, j].max()),
            "mean": float(x_train[:, j].mean()),
            "std": float(x_train[:, j].std()),
            "missing": int(missing[j]),
        }
        for j, name in enumerate(meta["feature_names"][:x_all.shape[1]])
    ]
    for j, (name, vocabulary) in enumerate(vocabularies.items()):
        values, counts = np.unique(categories[:, j], return_counts=True)
        seen = dict(zip(values.tolist(), counts.tolist()))
        features.append({"name": name, "dtype": "category", "vocabulary": vocabulary,
                         "counts": {value: seen.get(value, 0) for value in vocabulary},
                         "unseen_in_train": sum(n for value, n in seen.items() if value and value not in vocabulary),
                         "missing": seen.get("", 0)})
    return {"source": meta["source"], "kind": meta["kind"], "input_shape": meta["input_shape"], "features": features}


def _label_schema(meta, classes, y, split, rejected) -> dict:
    schema = {
        "task": meta["task"],
        "rows": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        "rejected": rejected,
    }
    if meta["task"] == "classification":
        schema["classes"] = classes
        schema["label_distribution"] = {
            name: {c: int(((split == i) & (y == k)).sum()) for k, c in enumerate(classes)}
            for i, name in enumerate(SPLITS)
        }
    else:
        train = y[split == 0]  # the output head un-standardises with these: train split only
        schema["label_stats"] = {"min": float(y.min()), "max": float(y.max()), "mean": float(y.mean()),
                                 "train_mean": float(train.mean()), "train_std": float(train.std())}
    return schema
