"""ingest + validate on CSV, .npz and digits: rejects with reasons, clear errors, seeded splits."""
import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.artifacts import Inputs, RunInfo
from pipeline.errors import StageError
from pipeline.specs import DataConfig, ValidateConfig
from pipeline.stages import ingest, validate


def ingest_and_validate(tmp_path, max_reject_fraction=0.5, seed=0, **data):
    cfg = SimpleNamespace(
        seed=seed,
        data=DataConfig(**data),
        validate=ValidateConfig(max_reject_fraction=max_reject_fraction),
    )
    raw, checked = tmp_path / "ingest", tmp_path / "validate"
    raw.mkdir(parents=True)
    checked.mkdir()
    run = RunInfo("test", {})
    ingest.run(cfg, Inputs({}, run), raw)
    validate.run(cfg, Inputs({"examples": raw / "examples"}, run), checked)
    return raw, checked


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


GOOD = [["a", "b", "label"]] + [[str(i), str(i * 2), "cat" if i % 2 else "dog"] for i in range(40)]


def test_bad_csv_rows_are_set_aside_with_the_reason(tmp_path):
    rows = GOOD + [["1", "oops", "cat"], ["", "2", "dog"], ["1", "2"], ["3", "4", ""], ["inf", "1", "cat"]]
    source = write_csv(tmp_path / "d.csv", rows)
    _, checked = ingest_and_validate(tmp_path, source=str(source))
    rejects = list(csv.DictReader((checked / "rejects.csv").open()))
    reasons = {int(r["row"]): r["reason"] for r in rejects}
    assert reasons == {
        42: "'b' is 'oops', not a number",
        43: "missing 'a'",
        44: "expected 3 fields, found 2",
        45: "missing label",
        46: "'a' is inf (missing or not finite)",
    }
    schema = json.loads((checked / "schema" / "schema.json").read_text())
    assert schema["classes"] == ["cat", "dog"]
    assert schema["rejected"] == 5
    assert sum(schema["rows"].values()) == 40
    kept = sum(len(np.load(checked / "dataset" / f"{s}.npz")["y"]) for s in ("train", "val", "test"))
    assert kept == 40


def test_too_many_rejects_fail_the_stage_with_the_numbers(tmp_path):
    rows = GOOD[:11] + [["x", "1", "cat"]] * 1 + [["", "", "dog"]] * 3
    source = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(StageError, match=r"4 of 14 rows \(28.6%\) break the schema.*max_reject_fraction=0.05"):
        ingest_and_validate(tmp_path, source=str(source), max_reject_fraction=0.05)


def test_missing_label_column_names_the_file_and_the_columns(tmp_path):
    source = write_csv(tmp_path / "d.csv", [["a", "b"], ["1", "2"]])
    with pytest.raises(StageError, match=r"label column 'label' \(data.label\) not found. Columns in the file: \['a', 'b'\]"):
        ingest_and_validate(tmp_path, source=str(source))


def test_a_text_column_is_a_dtype_error_not_rejected_rows(tmp_path):
    rows = [["a", "colour", "label"]] + [[str(i), "red", "1"] for i in range(10)]
    source = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(StageError, match=r"column 'colour' should hold numbers \(float32\), but 10 of 10 rows hold text"):
        ingest_and_validate(tmp_path, source=str(source))


def test_unreadable_csv_is_a_clear_error(tmp_path):
    source = tmp_path / "d.csv"
    source.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(StageError, match="is not a readable UTF-8 CSV file"):
        ingest_and_validate(tmp_path, source=str(source))


def test_regression_labels_must_be_numbers(tmp_path):
    rows = [["a", "label"]] + [[str(i), str(i / 2)] for i in range(30)] + [["1", "high"]]
    source = write_csv(tmp_path / "d.csv", rows)
    _, checked = ingest_and_validate(tmp_path, source=str(source), task="regression")
    rejects = list(csv.DictReader((checked / "rejects.csv").open()))
    assert [r["reason"] for r in rejects] == ["label 'high' is not a number (data.task is regression)"]
    assert np.load(checked / "dataset" / "train.npz")["y"].dtype == np.float32


def test_npz_keeps_its_shape_and_requires_x_and_y(tmp_path):
    source = tmp_path / "seq.npz"
    np.savez(source, x=np.random.rand(50, 5, 3), y=np.arange(50) % 3)
    _, checked = ingest_and_validate(tmp_path, source=str(source))
    schema = json.loads((checked / "schema" / "schema.json").read_text())
    assert schema["input_shape"] == [5, 3] and len(schema["features"]) == 15
    assert schema["classes"] == ["0", "1", "2"]
    bad = tmp_path / "bad.npz"
    np.savez(bad, features=np.zeros((3, 2)))
    with pytest.raises(StageError, match=r"missing \['x', 'y'\], found \['features'\]"):
        ingest_and_validate(tmp_path / "b", source=str(bad))


def test_digits_split_is_deterministic_by_seed(tmp_path):
    def test_rows(seed, where):
        where.mkdir()
        _, checked = ingest_and_validate(where, seed=seed)
        return np.load(checked / "dataset" / "test.npz")["x"]

    first, again, other = test_rows(1, tmp_path / "a"), test_rows(1, tmp_path / "b"), test_rows(2, tmp_path / "c")
    assert first.shape == (269, 64)  # 15 % of each digit's rows (stratified), rounded per digit
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_classification_splits_are_stratified_so_every_class_is_in_every_split(tmp_path):
    rows = [["a", "label"]] + [[str(i), "rare"] for i in range(3)] + [[str(i), "common"] for i in range(97)]
    _, checked = ingest_and_validate(tmp_path, source=str(write_csv(tmp_path / "d.csv", rows)))
    distribution = json.loads((checked / "schema" / "schema.json").read_text())["label_distribution"]
    assert distribution == {"train": {"common": 67, "rare": 1}, "val": {"common": 15, "rare": 1},
                            "test": {"common": 15, "rare": 1}}


def test_a_table_with_one_class_is_refused_before_training_naming_what_it_holds(tmp_path):
    rows = [["a", "b", "kind"]] + [[str(i), str(-i), "a"] for i in range(50)]
    with pytest.raises(StageError) as info:
        ingest_and_validate(tmp_path, source=str(write_csv(tmp_path / "d.csv", rows)), label="kind")
    assert str(info.value).startswith("classification needs at least 2 classes; the label column 'kind' holds only "
                                      "'a' (50 rows).")


def test_a_class_too_small_for_every_split_is_refused_with_the_fix(tmp_path):
    rows = [["a", "label"]] + [[str(i), "yes" if i % 2 else "no"] for i in range(40)] + [["9", "maybe"]] * 2
    with pytest.raises(StageError) as info:
        ingest_and_validate(tmp_path, source=str(write_csv(tmp_path / "d.csv", rows)))
    message = str(info.value)
    assert "every class needs rows in the train, val and test splits (at least 3 rows each)" in message
    assert "'maybe' has 2 row(s) and none in the" in message and "data.classes=[no, yes]" in message


def test_small_splits_are_said_with_what_one_row_is_worth(tmp_path, capsys):
    rows = [["a", "label"]] + [[str(i), "yes" if i % 2 else "no"] for i in range(10)]
    ingest_and_validate(tmp_path, source=str(write_csv(tmp_path / "d.csv", rows)))
    assert ("validate: warning: small splits (train 6 rows, val 2 rows, test 2 rows): one row moves accuracy on them "
            "by 16.7 / 50.0 / 50.0 points") in capsys.readouterr().out


def test_input_shape_must_match_the_feature_count(tmp_path):
    with pytest.raises(StageError, match=r"data.input_shape \[4, 4\] holds 16 values, but digits has 64 features"):
        ingest_and_validate(tmp_path, input_shape=(4, 4))


@pytest.mark.parametrize("labels, task, why", [
    (["cat", "dog", "cat"], "classification", "the labels are not all numbers (e.g. 'cat')"),
    (["0", "1", "1", ""], "classification", "the labels take 2 distinct values"),
    (["3", "1.5", "2"], "regression", "the labels are numbers with fractions (e.g. 1.5)"),
    ([str(v) for v in range(25, 250)], "regression", "the labels are 225 distinct whole numbers, more than 20 classes"),
])
def test_the_task_is_inferred_from_the_labels_with_a_reason(labels, task, why):
    assert ingest.infer_task(np.array(labels)) == (task, why)


def test_auto_task_is_said_and_recorded(tmp_path, capsys):
    rows = [["a", "label"]] + [[str(i), str(100 + 3 * i)] for i in range(60)]
    raw, checked = ingest_and_validate(tmp_path, source=str(write_csv(tmp_path / "d.csv", rows)), task="auto")
    assert "data.task=auto: regression, because the labels are 60 distinct whole numbers" in capsys.readouterr().out
    schema = json.loads((checked / "schema" / "schema.json").read_text())
    assert schema["task"] == "regression" and schema["label_stats"]["train_std"] > 0
