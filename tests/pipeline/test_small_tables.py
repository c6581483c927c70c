"""Small tables (iris: 150 rows) train with the defaults: the batch scales with the train split, and a gate that
fails says when the data's size is the likely cause."""
import csv

import pytest

from pipeline.config import load_config
from pipeline.errors import StageFailed
from pipeline.progress import SilentReporter
from pipeline.runner import Runner
from pipeline.training.batch import MIN_STEPS_PER_EPOCH, batch_size_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    from sklearn.datasets import load_iris

    data, path = load_iris(), tmp_path_factory.mktemp("iris") / "iris.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*data.feature_names, "label"])
        writer.writerows([*row, data.target_names[target]] for row, target in zip(data.data, data.target))
    return path


def run(tmp_path, iris, *overrides):
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", f"data.source={iris}", "data.input_shape=[]",
                             "model.name=mlp", "train.verbose=0", *overrides])
    return Runner(cfg).run("evaluate", reporter=SilentReporter(), stage_output=None)


def test_the_batch_scales_down_only_for_a_train_split_too_small_for_it():
    assert batch_size_for(64, 102) == 102 // MIN_STEPS_PER_EPOCH == 6
    assert batch_size_for(64, 1258) == 64  # digits: as configured
    assert batch_size_for(64, 10) == 1


def test_a_150_row_table_meets_the_default_gate_with_the_default_settings(tmp_path, iris, capsys):
    records = {r.name: r for r in run(tmp_path, iris)}
    assert records["evaluate"].metrics["accuracy"] >= load_config().evaluate.min_accuracy == 0.95
    log = (tmp_path / "runs" / "latest" / "train" / "log.txt").read_text()
    assert ("train: at train.batch_size=64 an epoch of the 102 train rows would be 2 step(s); training at a global "
            "batch of 6 instead, 17 steps an epoch") in log


def test_a_failed_gate_on_a_small_table_names_its_size(tmp_path, iris):
    with pytest.raises(StageFailed) as info:
        run(tmp_path, iris, "train.epochs=1")
    assert info.value.stage == "evaluate"
    assert ("The data is small: 102 train rows, and 24 test rows, where one row is 4.2 points and the gate allows 1 "
            "wrong answer(s). A small table may need more epochs or more patience than the defaults (train.epochs=100 "
            "train.early_stopping_patience=20, say: its validation loss is noisy, and training stops early on it), "
            "or a gate that fits its size (evaluate.min_accuracy=0.91 allows 2).") in info.value.reason
