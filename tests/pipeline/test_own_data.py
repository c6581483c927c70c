"""ingest + validate on a user's image folders and text: decoded, resized, vocabulary adapted on the train
split; bad files, empty folders, stray labels and empty text explained."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import images
from pipeline.artifacts import ENCODED_TEST, data_spec, raw_inputs, read_schema, read_split
from pipeline.errors import StageError
from tests.pipeline.test_data import ingest_and_validate, write_csv


def image_folder(root, counts=None, size=(20, 12)):
    """Class folders of solid-colour RGB PNGs, each class its own colour."""
    counts = counts or {"red": 12, "blue": 12}
    colours = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 220, 20)}
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, colours[name]).save(root / name / f"{i}.png")
    return root


def rejects(checked) -> dict[str, str]:
    return {r["row"]: r["reason"] for r in csv.DictReader((checked / "rejects.csv").open())}


def test_images_are_decoded_resized_and_kept_as_sent_for_the_test_rows(tmp_path):
    root = image_folder(tmp_path / "pics")
    raw, checked = ingest_and_validate(tmp_path, source=str(root), image_size=(8, 8), channels=3)
    schema = read_schema(checked / "schema")
    assert schema["kind"] == "image" and schema["input_shape"] == [8, 8, 3] and schema["classes"] == ["blue", "red"]
    train = read_split(checked / "dataset", "train")
    assert train.x.shape[1] == 8 * 8 * 3
    red = train.x[train.y == 1][0].reshape(8, 8, 3)
    np.testing.assert_allclose(red[..., 0], 220, atol=1e-3)  # resized solid colour stays the colour
    files = raw_inputs(checked / "dataset", schema, 100)["x"]
    test = read_split(checked / "dataset", "test")
    assert len(files) == len(test.y) and (checked / "dataset" / ENCODED_TEST).is_file()
    import tensorflow as tf

    again = images.decode_and_resize(tf.constant(files[0]), (8, 8), 3).numpy().reshape(-1)
    np.testing.assert_array_equal(again, test.x[0])  # the bytes kept are the ones the pixels came from
    assert data_spec(schema).input_shape == (8, 8, 3)


def test_unreadable_and_wrong_channel_images_are_rejected_with_the_reason(tmp_path):
    root = image_folder(tmp_path / "pics", {"red": 20, "blue": 20})
    (root / "red" / "broken.png").write_bytes(b"not a png at all")
    Image.new("L", (10, 10), 128).save(root / "blue" / "grey.png")
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(root / "blue" / "alpha.png")
    (root / "blue" / "notes.txt").write_text("not an image, not read")
    _, checked = ingest_and_validate(tmp_path, source=str(root), image_size=(8, 8))
    found = rejects(checked)
    assert found.keys() == {"red/broken.png", "blue/grey.png", "blue/alpha.png"}
    assert found["red/broken.png"].startswith("cannot be decoded as an image")
    assert found["blue/grey.png"] == "has 1 channel(s), expected 3 (data.channels)"
    assert found["blue/alpha.png"] == "has 4 channel(s), expected 3 (data.channels)"


def test_a_class_folder_without_images_is_an_error_naming_it(tmp_path):
    root = image_folder(tmp_path / "pics")
    (root / "green").mkdir()
    (root / "green" / "readme.md").write_text("images to come")
    with pytest.raises(StageError, match=r"class folder\(s\) \['green'\] hold no images"):
        ingest_and_validate(tmp_path, source=str(root))
    with pytest.raises(StageError, match="holds no class folders"):
        ingest_and_validate(tmp_path / "b", source=str(tmp_path / "pics" / "green"))


def test_labels_outside_the_declared_classes_are_rejected(tmp_path):
    root = image_folder(tmp_path / "pics", {"red": 20, "blue": 20, "green": 1})
    _, checked = ingest_and_validate(tmp_path, source=str(root), image_size=(4, 4), classes=("red", "blue"))
    assert rejects(checked) == {"green/0.png": "label 'green' is not one of data.classes ['red', 'blue']"}
    assert read_schema(checked / "schema")["classes"] == ["blue", "red"]


def test_text_keeps_strings_and_adapts_the_vocabulary_on_the_train_split_only(tmp_path):
    rows = [["text", "label"]] + [[f"sunny warm day {i}", "weather"] if i % 2 else [f"goal team win {i}", "sport"]
                                  for i in range(60)] + [["", "sport"]]
    source = write_csv(tmp_path / "t.csv", rows)
    _, checked = ingest_and_validate(tmp_path, source=str(source), text_column="text", sequence_length=5)
    schema = read_schema(checked / "schema")
    assert schema["kind"] == "text" and schema["input_shape"] == []
    train, test = (read_split(checked / "dataset", s) for s in ("train", "test"))
    assert train.x.dtype.kind == "U" and "sunny" in " ".join(train.x)
    vocabulary = set(schema["text"]["vocabulary"])
    train_numbers = {w for t in train.x for w in t.split() if w.isdigit()}
    test_only = {w for t in test.x for w in t.split() if w.isdigit()} - train_numbers
    assert {"sunny", "goal"} <= vocabulary and train_numbers <= vocabulary and not test_only & vocabulary
    assert rejects(checked) == {"62": "empty text in 'text'"}
    spec = data_spec(schema)
    assert spec.kind == "text" and spec.sequence_length == 5 and len(spec.vocabulary) == len(vocabulary)


def test_an_empty_text_column_is_an_error(tmp_path):
    source = write_csv(tmp_path / "t.csv", [["text", "label"]] + [["", "a"]] * 5)
    with pytest.raises(StageError, match="text column 'text' is empty in all 5 rows"):
        ingest_and_validate(tmp_path, source=str(source), text_column="text")
    with pytest.raises(StageError, match=r"text column 'body' \(data.text_column\) not found"):
        ingest_and_validate(tmp_path / "b", source=str(source), text_column="body")


def test_the_rnn_builds_a_text_model_holding_its_vocabulary():
    from models import ModelConfig, build_model

    rows = ["sunny warm day", "goal team win"]
    schema = {"kind": "text", "input_shape": [], "task": "classification", "classes": ["sport", "weather"],
              "features": [{"name": "text", "mean": 0.0, "std": 1.0}],
              "text": {"vocabulary": ["sunny", "warm", "day", "goal", "team", "win"], "sequence_length": 4}}
    model = build_model(ModelConfig(name="rnn", cell="gru", width=4, depth=1), data_spec(schema))
    assert model(np.array(rows)).shape == (2, 2)
    vectorize = next(layer for layer in model.layers if type(layer).__name__ == "TextVectorization")
    assert vectorize(np.array(["day unknownword"])).numpy().tolist() == [[4, 1, 0, 0]]


def test_augmentation_flips_and_crops_but_keeps_shape_and_values():
    import tensorflow as tf

    image = np.arange(4 * 6 * 3, dtype=np.float32)
    augment = images.augmenter((4, 6, 3), ("flip", "crop"))
    tf.random.set_seed(0)
    seen = {tuple(augment(tf.constant(image), 0)[0].numpy()) for _ in range(20)}
    assert len(seen) > 1 and all(len(s) == image.size for s in seen)
    assert all(set(s) <= set(image.tolist()) | {0.0} for s in seen)  # pixels moved or padding, never invented


def cities(tmp_path, n=80):
    """A table whose label is decided by a categorical column: 'city' (three values) and a number."""
    rng = np.random.default_rng(0)
    names = ["paris", "oslo", "rome"]
    rows = [["size", "city", "label"]]
    for i in range(n):
        city = names[i % 3]
        rows.append([f"{rng.normal():.3f}", city, "warm" if city == "rome" else "cold"])
    return rows


def test_categorical_columns_get_a_vocabulary_from_the_train_split_and_indices(tmp_path):
    rows = cities(tmp_path) + [["0.5", "", "cold"], ["0.7", "lima", "warm"]]  # a missing city; one seen once
    source = write_csv(tmp_path / "c.csv", rows)
    raw, checked = ingest_and_validate(tmp_path, source=str(source), categorical=("city",))
    schema = read_schema(checked / "schema")
    city = schema["features"][-1]
    assert [f["name"] for f in schema["features"]] == ["size", "city"] and city["dtype"] == "category"
    in_train = sorted(city["vocabulary"])
    assert in_train in (["lima", "oslo", "paris", "rome"], ["oslo", "paris", "rome"])  # lima's split is the seed's
    assert city["counts"] == {**{"oslo": 27, "paris": 27, "rome": 26}, **({"lima": 1} if "lima" in in_train else {})}
    assert (city["missing"], city["unseen_in_train"]) == (1, 0 if "lima" in in_train else 1)
    assert "min" not in city and "mean" not in city  # categories have no numeric statistics to show
    train = np.load(checked / "dataset" / "train.npz")
    position = {v: i + 1 for i, v in enumerate(city["vocabulary"])}  # a missing or unseen city is 0, as served
    assert train["x"][:, 1].tolist() == [position.get(c, 0) for c in train["categorical"][:, 0]]
    assert rejects(checked) == {}  # a missing category is kept: the model reads it as it will be served
    assert json.loads((raw / "examples" / "meta.json").read_text())["categorical"] == ["city"]
    assert data_spec(schema).categories == (len(in_train),)
    inputs = raw_inputs(checked / "dataset", schema, 4)
    assert set(inputs) == {"x", "city"} and inputs["x"].shape == (4, 1) and inputs["city"].dtype.kind == "U"


def test_a_parquet_file_reads_like_the_same_csv(tmp_path):
    import pyarrow
    import pyarrow.parquet

    rows = cities(tmp_path)
    columns = list(zip(*rows[1:]))
    table = pyarrow.table({"size": [float(v) for v in columns[0]], "city": list(columns[1]), "label": list(columns[2])})
    pyarrow.parquet.write_table(table, tmp_path / "c.parquet")
    _, from_parquet = ingest_and_validate(tmp_path / "p", source=str(tmp_path / "c.parquet"), categorical=("city",))
    _, from_csv = ingest_and_validate(tmp_path / "c", source=str(write_csv(tmp_path / "c.csv", rows)),
                                      categorical=("city",))
    for split in ("train", "test"):
        a, b = (np.load(d / "dataset" / f"{split}.npz") for d in (from_parquet, from_csv))
        np.testing.assert_allclose(a["x"], b["x"], rtol=1e-6)
        assert a["categorical"].tolist() == b["categorical"].tolist()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StageError, match="is not a readable Parquet file"):
        ingest_and_validate(tmp_path / "bad", source=str(tmp_path / "bad.parquet"))


def test_categorical_names_must_be_usable_as_serving_inputs():
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"data.categorical: \['home town', 'x'\] cannot name serving inputs"):
        load_config(None, ["data.categorical=[home town, x]"])
