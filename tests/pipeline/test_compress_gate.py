"""The compress stage's measures without a pipeline run: the paired drop and its interval, int8 on a table with
categorical columns, loading a saved variant, and the config errors."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import DataSpec, ModelConfig, build_model
from pipeline.compression import loading, tflite, variants
from pipeline.compression.measure import paired_drop
from pipeline.config import ConfigError, load_config
from tests.pipeline_cli import pipeline_env


def test_a_variant_that_agrees_with_the_trained_model_everywhere_has_no_drop_and_no_uncertainty():
    correct = np.array([True] * 90 + [False] * 10)
    assert paired_drop(correct, correct.copy(), seed=1) == {"accuracy_drop": 0.0, "drop_interval": [0.0, 0.0],
                                                            "rows_lost": 0, "rows_gained": 0}


def test_the_drop_counts_rows_lost_and_gained_on_the_same_rows_and_its_interval_holds_it():
    baseline = np.ones(200, bool)
    variant = baseline.copy()
    variant[:5] = False  # five rows the variant gets wrong
    baseline[10:12] = False  # two rows only the variant gets right
    drop = paired_drop(baseline, variant, seed=3)
    assert (drop["rows_lost"], drop["rows_gained"]) == (5, 2) and drop["accuracy_drop"] == pytest.approx(3 / 200)
    low, high = drop["drop_interval"]
    assert low < 0 < 3 / 200 < high < 0.05  # seven disagreements in 200 rows: a loss of 1.5 points may be none
    assert paired_drop(baseline, variant, seed=3) == drop  # the same seed, the same interval


LOADS_WITHOUT_TFMOT = """
import sys
from pipeline.compression import loading
model = loading.load(sys.argv[1])
print(model.count_params(), "tensorflow_model_optimization" in sys.modules)
"""


@pytest.mark.slow  # a process of its own (4 s): whether it imported TFMOT
def test_a_plain_model_loads_without_importing_tfmot_and_a_qat_one_within_its_scope(tmp_path):
    import tensorflow_model_optimization as tfmot

    plain = build_model(ModelConfig(name="mlp", width=4, depth=1),
                        DataSpec(8, (8,), "classification", 2, np.zeros(8, np.float32), np.ones(8, np.float32)))
    plain.save(tmp_path / "plain.keras")
    qat = variants.quantize_aware(plain)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(np.ones((4, 8), np.float32), np.ones(4), verbose=0)  # fine-tuned, then saved as compress does
    variants.savable(qat).save(tmp_path / "qat.keras")
    assert not loading.needs_tfmot(tmp_path / "plain.keras") and loading.needs_tfmot(tmp_path / "qat.keras")
    qat = loading.load(tmp_path / "qat.keras")
    assert any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) for layer in qat.layers)
    result = subprocess.run([sys.executable, "-c", LOADS_WITHOUT_TFMOT, str(tmp_path / "plain.keras")],
                            env=pipeline_env(), capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == [str(plain.count_params()), "False"], result.stderr[-2000:]


def test_int8_keeps_a_table_whose_label_is_a_categorical_column():
    """Categories are vocabulary indices in the row beside the numbers: quantized with the numbers' scale
    (here up to 4000), indices 1 to 4 fell into one int8 step and every row read the same embedding."""
    rng = np.random.default_rng(0)
    rows = 800
    city = rng.integers(1, 5, rows)  # 1 + position in a vocabulary of 4 (0: not in it)
    x = np.stack([rng.uniform(0, 0.01, rows), rng.uniform(0, 4000, rows), city], axis=1).astype(np.float32)
    y = city - 1
    spec = DataSpec(3, (3,), "classification", 4, x.mean(axis=0), x.var(axis=0), categories=(4,))
    model = build_model(ModelConfig(name="mlp", width=16, depth=1, dropout=0.0), spec)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    float_accuracy = (model.predict(x, verbose=0).argmax(axis=1) == y).mean()
    int8 = tflite.to_tflite(model, "int8", x[:200])
    int8_accuracy = (tflite.tflite_predictions(int8, x).argmax(axis=1) == y).mean()
    assert float_accuracy >= 0.99 and int8_accuracy >= float_accuracy - 0.01


def test_a_model_that_reads_strings_is_said_to_have_no_tflite_form_and_why():
    """Text preprocessing inside the model (TextVectorization lowercases with tf.StringLower) has no TFLite
    builtin: the reason names it, so the report says why the text model ships no .tflite."""
    sentences = np.array(["Rain and wind today", "The team scored late", "Bake it with sugar"])
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4)
    vectorize.adapt(sentences)
    text = keras.Input((), dtype=tf.string)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(3, activation="softmax")(pooled))
    with pytest.raises(tflite.ConversionFailed) as info:
        tflite.to_tflite(model, "float")
    assert "the model reads strings (text preprocessing such as TextVectorization), which TFLite's builtin ops " \
           "cannot: it is served as a SavedModel" in str(info.value)


def test_compress_config_errors_name_the_key_the_value_and_what_is_expected():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["compress.variants=[pruned]", "compress.select=distilled", "compress.max_accuracy_drop=1.5",
                           "compress.target_sparsity=0", "compress.distill_patience=0"])
    message = str(info.value)
    assert ("compress.select: expected smallest_within, baseline or one of the variants compress runs "
            "(compress.variants=['pruned']), received 'distilled'.") in message
    assert "compress.max_accuracy_drop: expected a number in [0, 1] (0.01 is a point of accuracy), received 1.5." \
        in message
    assert "compress.target_sparsity: expected a number in (0, 1), received 0" in message
    assert "compress.distill_patience: expected a positive integer, received 0." in message
