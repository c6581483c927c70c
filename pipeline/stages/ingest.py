"""Read the raw data (bundled digits, a CSV or Parquet file, an .npz file or a folder of images per class) and
split it by seed.

Cells that cannot be read are kept (as NaN, with the reason) for validate to set aside:
ingest never drops a row. A column that is mostly not numbers is a wrong file, and fails here.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline import images, specs
from pipeline.artifacts import SPLITS, Inputs, write_examples
from pipeline.errors import StageError
from pipeline.specs import DataConfig
from pipeline.views import IngestView

SPEC = specs.INGEST


def external_inputs(cfg: IngestView) -> list[Path]:
    """Files whose content is part of this stage's cache key."""
    source = Path(cfg.data.source)
    if cfg.data.source == "digits":
        return []
    return sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]


def run(cfg: IngestView, inputs: Inputs, out: Path) -> dict:
    data = cfg.data
    if data.source == "digits":
        table = _read_digits()
    elif Path(data.source).is_dir():
        table = _read_images(Path(data.source), data)
    elif data.source.endswith(".npz"):
        table = _read_npz(Path(data.source))
    elif data.text_column:
        table = _read_text_table(Path(data.source), data)
    else:
        table = _read_table(Path(data.source), data)
    x, labels, rows, problems, feature_names, stored_shape, kind = table[:7]
    input_shape = (tuple(data.input_shape) or stored_shape) if kind == "numeric" else stored_shape
    if kind == "numeric" and math.prod(input_shape) != len(feature_names):
        raise StageError(
            f"data.input_shape {list(input_shape)} holds {math.prod(input_shape)} values, but "
            f"{data.source} has {x.shape[1]} features per row. Set data.input_shape to a shape "
            f"whose sizes multiply to {x.shape[1]}, or [] to keep the stored shape."
        )
    task = data.task
    if task == "auto":
        task, why = infer_task(labels)
        print(f"ingest: data.task=auto: {task}, because {why}. Set data.task to decide otherwise.")
    split = _split(labels if task == "classification" else None, len(x), data.val_fraction, data.test_fraction,
                   cfg.seed)
    categorical = {} if table.categorical is None else {"categorical": table.categorical}
    counts = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    meta = {
        "source": data.source,
        "task": task,
        "kind": kind,
        "labels_from": _labels_from(data),
        "feature_names": feature_names,
        "categorical": list(data.categorical) if table.categorical is not None else [],
        "input_shape": list(input_shape),
        "rows": counts,
        **({"origin": table.origin} if table.origin else {}),
    }
    write_examples(out, dict(x=x, label=labels, row=rows, problem=problems, split=split, **categorical), meta,
                   None if table.encoded is None else images.pack(table.encoded))  # files as clients will send them
    n_categorical = len(meta["categorical"])
    features = (f"{len(feature_names) - n_categorical} numeric + {n_categorical} categorical features" if n_categorical
                else f"{len(feature_names)} features")
    described = f"{len(x)} rows" if kind == "numeric" else f"{len(x)} {kind} rows"
    print(f"ingest: {described} x {features} from {data.source} -> {counts}")
    return {"rows": len(x), "features": len(feature_names), "unreadable_rows": int((problems != "").sum())}


class Table(NamedTuple):
    """What a reader found: every row kept, with the reason it cannot be used in `problems` ("" when it can)."""

    x: np.ndarray  # float32 [rows, numeric features], or str [rows] for text
    labels: np.ndarray
    rows: np.ndarray  # where each row came from: a line number, an index, or a file's path
    problems: np.ndarray
    feature_names: list[str]  # numeric features, then categorical ones
    stored_shape: tuple[int, ...]
    kind: str = "numeric"
    encoded: list[bytes] | None = None  # image files as stored
    categorical: np.ndarray | None = None  # str [rows, categorical columns]
    origin: dict | None = None  # rows exported from request logs: which versions were asked them, when


LOGGED = "logged_"  # columns pipeline.monitor export adds beside the training columns: never features
MAX_CLASSES = 20  # whole-number labels with more distinct values than this are taken as a quantity


def _labels_from(data: DataConfig) -> str:
    """Where the labels were read, for messages about them."""
    if data.source == "digits":
        return "the digits' targets"
    if Path(data.source).is_dir():
        return f"the class folders of {data.source}"
    if data.source.endswith(".npz"):
        return f"y of {data.source}"
    return f"the label column {data.label!r}"


def infer_task(labels: np.ndarray) -> tuple[str, str]:
    """(task, why) from the label column, for data.task=auto."""
    values = sorted(set(labels.tolist()) - {""})
    numbers = []
    for value in values:
        try:
            numbers.append(float(value))
        except ValueError:
            return "classification", f"the labels are not all numbers (e.g. {value!r})"
    fractional = [v for v in numbers if math.isfinite(v) and v != round(v)]
    if fractional:
        return "regression", f"the labels are numbers with fractions (e.g. {fractional[0]})"
    if len(values) > MAX_CLASSES:
        return "regression", f"the labels are {len(values)} distinct whole numbers, more than {MAX_CLASSES} classes"
    return "classification", f"the labels take {len(values)} distinct values"


def _read_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    names = [f"pixel_{i}" for i in range(digits.data.shape[1])]
    labels = digits.target.astype(str)
    return Table(digits.data.astype(np.float32), labels, np.arange(n), np.full(n, ""), names, (8, 8, 1))


def _read_images(root: Path, data: DataConfig):
    files = images.class_files(root)
    if not files:
        raise StageError(f"data.source {str(root)!r} holds no class folders; expected one sub-folder of images per "
                         f"class, e.g. {root}/cat/1.png, {root}/dog/2.png.")
    empty = [name for name, paths in files.items() if not paths]
    if empty:
        raise StageError(f"data.source {str(root)!r}: class folder(s) {empty} hold no images ({', '.join(images.EXTENSIONS)}); "
                         f"add images or remove the folder(s).")
    size = (data.image_size[0], data.image_size[1])
    print(f"ingest: decoding and resizing {sum(map(len, files.values()))} images of {len(files)} classes to "
          f"{list(size)}x{data.channels}", flush=True)
    x, labels, rows, problems, encoded = images.read_image_folders(root, size, data.channels)
    names = [f"pixel_{i}" for i in range(x.shape[1])]
    return Table(x, labels, rows, problems, names, (*size, data.channels), "image", encoded)


def _read_npz(path: Path):
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise StageError(f"data.source {str(path)!r} is not a readable .npz file: {e}") from None
    missing = [k for k in ("x", "y") if k not in arrays.files]
    if missing:
        raise StageError(
            f"data.source {str(path)!r} must hold arrays 'x' (features, [rows, ...]) and 'y' "
            f"(labels, [rows]); missing {missing}, found {arrays.files}."
        )
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.number) or len(x) != len(y) or y.ndim != 1:
        raise StageError(
            f"data.source {str(path)!r}: expected numeric 'x' [rows, ...] and 'y' [rows] with the "
            f"same number of rows, received x {x.dtype} {list(x.shape)}, y {y.dtype} {list(y.shape)}."
        )
    n = len(x)
    flat = x.reshape(n, -1).astype(np.float32)
    names = [f"x_{i}" for i in range(flat.shape[1])]
    return Table(flat, y.astype(str), np.arange(n), np.full(n, ""), names, tuple(x.shape[1:]))


def _records(path: Path, data: DataConfig) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows as text, from a CSV or a Parquet file, the label column checked."""
    records = _parquet_records(path) if path.suffix == ".parquet" else _csv_records(path)
    if not records:
        raise StageError(f"data.source {str(path)!r} is empty; expected a header row and data rows.")
    header = [h.strip() for h in records[0]]
    if data.label not in header:
        raise StageError(
            f"data.source {str(path)!r}: label column {data.label!r} (data.label) not found. "
            f"Columns in the file: {header}."
        )
    return header, records[1:]


def _csv_records(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise StageError(f"data.source {str(path)!r} is not a readable UTF-8 CSV file: {e}") from None


def _parquet_records(path: Path) -> list[list[str]]:
    """A Parquet table as CSV-like text rows (nulls as empty cells), so both are checked by the same rules."""
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise StageError(f"data.source {str(path)!r} is not a readable Parquet file: {e}") from None
    columns = [["" if v is None else str(v) for v in column.to_pylist()] for column in table.columns]
    return [table.column_names, *map(list, zip(*columns))]


def _read_text_table(path: Path, data: DataConfig) -> Table:
    """One column of free text: each row's text is the model's input, as a string."""
    header, body = _records(path, data)
    if data.text_column not in header:
        raise StageError(f"data.source {str(path)!r}: text column {data.text_column!r} (data.text_column) not found. "
                         f"Columns in the file: {header}.")
    text, label = header.index(data.text_column), header.index(data.label)
    texts = np.full(len(body), "", dtype=object)
    labels = np.full(len(body), "", dtype=object)
    problems = np.full(len(body), "", dtype=object)
    for i, record in enumerate(body):
        if len(record) != len(header):
            problems[i] = f"expected {len(header)} fields, found {len(record)}"
            continue
        texts[i], labels[i] = record[text].strip(), record[label].strip()
    if body and not any(texts):
        raise StageError(f"data.source {str(path)!r}: text column {data.text_column!r} is empty in all {len(body)} "
                         f"rows; name the column that holds the text in data.text_column.")
    rows = np.arange(2, len(body) + 2)
    return Table(texts.astype(str), labels.astype(str), rows, problems.astype(str), [data.text_column], (), "text",
                 origin=_logged_origin(header, body))


def _logged_origin(header: list[str], body: list[list[str]]) -> dict | None:
    """Where rows exported from request logs (python -m pipeline.monitor export) came from: the versions that were
    asked them, and when; None for other data."""
    if "logged_version" not in header:
        return None
    version, at = header.index("logged_version"), header.index("logged_at") if "logged_at" in header else None
    whole = [r for r in body if len(r) == len(header)]
    times = sorted(r[at] for r in whole if r[at]) if at is not None else []
    return {"request_logs": {"rows": len(whole), "versions": sorted({int(r[version]) for r in whole
                                                                     if r[version].strip().isdigit()}),
                             "first": times[0] if times else None, "last": times[-1] if times else None}}


def _read_table(path: Path, data: DataConfig) -> Table:
    header, body = _records(path, data)
    chosen = list(data.features) or [h for h in header if h != data.label and not h.startswith(LOGGED)]
    categorical = list(data.categorical)
    features = [c for c in chosen if c not in categorical]
    absent = [c for c in features + categorical if c not in header]
    if absent:
        raise StageError(
            f"data.source {str(path)!r}: feature columns {absent} (data.features) not found. "
            f"Columns in the file: {header}."
        )
    columns = [header.index(c) for c in features]
    category_columns = [header.index(c) for c in categorical]
    label_column = header.index(data.label)
    x = np.full((len(body), len(features)), np.nan, dtype=np.float32)
    categories = np.full((len(body), len(categorical)), "", dtype=object)
    labels = np.full(len(body), "", dtype=object)
    problems = np.full(len(body), "", dtype=object)
    bad_cells = {c: [] for c in features}
    for i, record in enumerate(body):
        if len(record) != len(header):
            problems[i] = f"expected {len(header)} fields, found {len(record)}"
            continue
        labels[i] = record[label_column].strip()
        reasons = []
        for j, (name, column) in enumerate(zip(features, columns)):
            cell = record[column].strip()
            try:
                x[i, j] = float(cell)
            except ValueError:
                reasons.append(f"missing '{name}'" if not cell else f"'{name}' is {cell!r}, not a number")
                if cell:
                    bad_cells[name].append(cell)
        for j, column in enumerate(category_columns):  # an empty cell is a missing category, kept: the model
            categories[i, j] = record[column].strip()   # reads it as it reads a value it never saw, as served
        problems[i] = "; ".join(reasons)
    _check_numeric_columns(path, bad_cells, len(body))
    rows = np.arange(2, len(body) + 2)  # line numbers in the file, header is line 1
    names = features + categorical
    return Table(x, labels.astype(str), rows, problems.astype(str), names, (len(names),),
                 categorical=categories.astype(str) if categorical else None, origin=_logged_origin(header, body))


def _check_numeric_columns(path: Path, bad_cells: dict[str, list[str]], n_rows: int) -> None:
    """A column that is mostly text is the wrong column (or the wrong file), not bad rows."""
    for name, cells in bad_cells.items():
        if n_rows and len(cells) > n_rows / 2:
            raise StageError(
                f"data.source {str(path)!r}: column {name!r} should hold numbers (float32), but "
                f"{len(cells)} of {n_rows} rows hold text, e.g. {cells[:3]}. Name it in data.categorical (categories) "
                f"or data.text_column (free text), remove it from data.features, or make it the label with "
                f"data.label={name}."
            )


def _split(labels: np.ndarray | None, n: int, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """0 = train, 1 = val, 2 = test; the same seed always gives the same split. For classification (`labels`) the
    rows of each class are split apart (stratified), so every class of 3 rows or more is in every split and in
    the same proportions."""
    rng = np.random.default_rng(seed)
    split = np.zeros(n, dtype=np.int8)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == value) for value in np.unique(labels)]
    for rows in groups:
        order = rng.permutation(rows)
        n_test, n_val = round(len(rows) * test_fraction), round(len(rows) * val_fraction)
        if labels is not None and len(rows) >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        split[order[:n_test]] = 2
        split[order[n_test : n_test + n_val]] = 1
    return split
