"""A user's own model and training step, used by pipeline/configs/custom_model.yaml without editing the project.

`build` is what model.name names (examples.custom_model:build): it is given the model config and the
data's shape and statistics (models.DataSpec) and returns a tf_keras model, here a subclassed one.
A subclassed model is reloaded by later stages from model.keras, so its class is registered and
has get_config(). `train_step` is what train.step names, with train.loop=custom: one replica's step
under strategy.run, here with label smoothing.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from models import DataSpec, ModelConfig

LABEL_SMOOTHING = 0.1


@keras.saving.register_keras_serializable(package="examples")
class SmallConvNet(keras.Model):
    """Standardise flat rows, reshape them to images, two convolutions, softmax."""

    def __init__(self, image_shape, n_classes, mean, variance, width=32, dropout=0.2, **kwargs):
        super().__init__(**kwargs)
        self.settings = dict(image_shape=list(image_shape), n_classes=n_classes, mean=list(map(float, mean)),
                             variance=list(map(float, variance)), width=width, dropout=dropout)
        self.normalize = keras.layers.Normalization(mean=mean, variance=variance)
        self.reshape = keras.layers.Reshape(image_shape)
        self.conv1 = keras.layers.Conv2D(width, 3, padding="same", activation="relu")
        self.conv2 = keras.layers.Conv2D(width * 2, 3, padding="same", activation="relu")
        self.pool = keras.layers.Flatten()
        self.drop = keras.layers.Dropout(dropout)
        self.classify = keras.layers.Dense(n_classes, activation="softmax")

    def call(self, x, training=False):
        x = self.reshape(self.normalize(x))
        x = self.conv2(self.conv1(x))
        return self.classify(self.drop(self.pool(x), training=training))

    def get_config(self):
        return {**super().get_config(), **self.settings}


def build(cfg: ModelConfig, spec: DataSpec) -> keras.Model:
    std = np.maximum(np.sqrt(spec.variance), 1.0)  # pixels that never vary: no huge 1/std
    return SmallConvNet(spec.input_shape, spec.n_outputs, spec.mean, std**2, width=cfg.width, dropout=cfg.dropout,
                        name="small_conv_net")


def train_step(model: keras.Model, batch, optimizer: keras.optimizers.Optimizer):
    """Cross-entropy against smoothed one-hot labels, scaled by the global batch across replicas."""
    x, y = batch
    targets = tf.one_hot(tf.cast(y, tf.int32), model.settings["n_classes"])
    with tf.GradientTape() as tape:
        probabilities = model(x, training=True)
        per_example = keras.losses.categorical_crossentropy(targets, probabilities, label_smoothing=LABEL_SMOOTHING)
        loss = tf.nn.compute_average_loss(per_example)
    gradients = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
    return loss, probabilities
