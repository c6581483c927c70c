"""train.loop=custom (pipeline.training.custom_loop): its steps equal fit's, on one device and across
replicas; a killed loop resumes after its last finished epoch; a user step is checked."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models.compile_settings import compile_settings
from models.user import UserCodeError
from pipeline.artifacts import Split
from pipeline.training.custom_loop import default_step, fit_custom, user_step
from tests.pipeline_cli import ROOT, pipeline_env

rng = np.random.default_rng(0)
TRAIN = Split(rng.normal(size=(96, 6)).astype(np.float32), rng.integers(0, 3, 96))
VAL = Split(rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 3, 32))


def tiny_model(seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(**compile_settings("classification", 0.01))
    return model


def train(model, tmp_path, epochs=3, callbacks=(), step=None):
    return fit_custom(model, tf.distribute.get_strategy(), TRAIN, VAL, task="classification", epochs=epochs,
                      global_batch=32, seed=0, step=step or default_step("classification"),
                      callbacks=list(callbacks), backup=tmp_path / "backup", chief=True)


def test_one_custom_step_is_one_fit_step():
    x, y = TRAIN.x[:32], TRAIN.y[:32]
    by_fit, by_loop = tiny_model(), tiny_model()
    by_fit.train_on_batch(x, y)
    default_step("classification")(by_loop, (tf.constant(x), tf.constant(y)), by_loop.optimizer)
    for a, b in zip(by_fit.get_weights(), by_loop.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_history_has_fits_keys_and_training_lowers_the_loss(tmp_path):
    history = train(tiny_model(), tmp_path, epochs=4)
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history["loss"]) == 4 and history["loss"][-1] < history["loss"][0]
    assert not (tmp_path / "backup").exists()  # finished: the backup is removed, as BackupAndRestore does


class Crash(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 2")


def test_a_killed_loop_resumes_after_its_last_finished_epoch(tmp_path):
    model = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train(model, tmp_path, epochs=4, callbacks=[Crash()])
    saved = model.get_weights()
    resumed = tiny_model(seed=7)  # a fresh process: other initial weights, restored from the backup
    history = train(resumed, tmp_path, epochs=2)
    assert history == {}  # both epochs were already done
    for a, b in zip(saved, resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    model = tiny_model(seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(model, tmp_path / "again", epochs=4, callbacks=[Crash()])
    assert len(train(tiny_model(seed=3), tmp_path / "again", epochs=4)["loss"]) == 2  # epochs 3 and 4


def test_early_stopping_restores_the_best_weights(tmp_path):
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    model = tiny_model()
    model.optimizer.learning_rate.assign(1.0)  # so large that val_loss soon rises
    history = train(model, tmp_path, epochs=30, callbacks=[stop])
    assert len(history["loss"]) < 30
    best = int(np.argmin(history["val_loss"]))
    assert stop.best == pytest.approx(history["val_loss"][best])


def test_a_user_step_must_return_loss_and_predictions(tmp_path):
    module = tmp_path / "steps.py"
    module.write_text("def step(model, batch, optimizer):\n    return 1.0\n")
    with pytest.raises(UserCodeError, match=r"steps.py:step returned float; expected train_step\(model, batch"):
        train(tiny_model(), tmp_path, epochs=1, step=user_step(f"{module}:step"))


def test_a_user_step_that_raises_shows_its_own_line(tmp_path):
    module = tmp_path / "steps.py"
    module.write_text("def step(model, batch, optimizer):\n    raise RuntimeError('my bug')\n")
    with pytest.raises(UserCodeError) as caught:
        train(tiny_model(), tmp_path, epochs=1, step=user_step(f"{module}:step"))
    message = str(caught.value)
    assert "raised RuntimeError: my bug" in message and f'File "{module}", line 2' in message
    assert "It is called as train_step(model, batch: (x, y), optimizer)" in message


ACROSS_REPLICAS = """
import numpy as np, tensorflow as tf, tf_keras as keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models.compile_settings import compile_settings
from pipeline.training.custom_loop import default_step

def model():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")])
    m.compile(**compile_settings("classification", 0.01))
    return m

rng = np.random.default_rng(0)
x, y = rng.normal(size=(32, 6)).astype(np.float32), rng.integers(0, 3, 32)
one = model()
default_step("classification")(one, (tf.constant(x), tf.constant(y)), one.optimizer)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = model()
batch = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))))
step = default_step("classification")
strategy.run(tf.function(lambda b: step(two, b, two.optimizer)), args=(batch,))
gap = max(float(np.abs(a - b).max()) for a, b in zip(one.get_weights(), two.get_weights()))
print("replicas", strategy.num_replicas_in_sync, "gap", gap)
"""


@pytest.mark.slow  # a process with two logical CPUs
def test_two_replicas_take_the_same_step_as_one_device_on_the_global_batch():
    result = subprocess.run([sys.executable, "-c", ACROSS_REPLICAS], cwd=ROOT, env=pipeline_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas, gap = result.stdout.split()[1], float(result.stdout.split()[3])
    assert replicas == "2" and gap < 1e-6, result.stdout
