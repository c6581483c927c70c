"""Turn a trained Keras model into compressed Keras variants with TFMOT, and fine-tune them.

Each function takes the trained model and returns a new one; `train_variants` creates and
fine-tunes them inside the given tf.distribute strategy's scope (TFMOT wrappers must be created
where the model's variables live).
Only layers TFMOT knows (Dense, Conv2D, ...) are wrapped: the others (Normalization, LSTM, ...)
stay float and are named in a warning, so any model from models/ can be compressed.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    default_8bit_prune_preserve_quantize_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry,
)

from models import DataSpec, build_model
from models.compile_settings import compile_settings
from pipeline.artifacts import Split
from pipeline.compression.loading import tfmot_scope

COMPRESSIBLE = (keras.layers.Dense, keras.layers.Conv2D)  # what all three TFMOT techniques handle here


class NothingToCompress(ValueError):
    """The model has no layer the technique applies to."""


def _wrap(model: keras.Model, wrap: Callable[[keras.layers.Layer], keras.layers.Layer],
          applies: Callable[[keras.layers.Layer], bool], technique: str, kept: frozenset[str] = frozenset()
          ) -> keras.Model:
    """A copy of `model` with the layers `applies` accepts wrapped; warns naming the others, but those in `kept`
    (left as they are on purpose).

    TFMOT's pattern (clone_model with a clone_function) reuses the layer objects, so it runs on
    an independent copy: fine-tuning the variant must not change the model it came from.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    wrapped, skipped = [], []

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if applies(layer):
            wrapped.append(layer.name)
            return wrap(layer)
        if layer.trainable_weights and layer.name not in kept:
            skipped.append(f"{layer.name} ({type(layer).__name__})")
        return layer

    result = keras.models.clone_model(copy, clone_function=clone)
    if not wrapped:
        raise NothingToCompress(f"{technique}: model '{model.name}' has no layer it can handle; "
                                f"it handles {', '.join(c.__name__ for c in COMPRESSIBLE)}.")
    if skipped:
        warnings.warn(f"{technique}: left as they are (not supported): {', '.join(skipped)}", stacklevel=3)
    return result


def prune(model: keras.Model, target_sparsity: float, steps: int) -> keras.Model:
    """Magnitude pruning of every Dense and Conv2D kernel but the first and the last: sparsity rises from 0 to
    `target_sparsity` over the first two thirds of `steps` training steps; the last third recovers accuracy at
    the final sparsity.

    The first layer (it reads the input) and the output layer are small and every prediction passes through
    all of their weights: pruning them with the rest to 80 % cost digits' CNN 1.5 to 2.6 points of accuracy on
    seeds 1 to 3, the same pruning that leaves them dense at most 0.4 (benchmarks/results/compression.md). The
    schedule prunes every `frequency` steps and only up to `end_step`; both are chosen so the last pruning step
    falls inside the fine-tuning, or the target is never reached (the default frequency of 100 steps is longer
    than a whole fine-tuning of a small dataset).
    """
    ramp = max(1, steps * 2 // 3)
    frequency = max(1, min(100, ramp // 10))
    end_step = max(frequency, ramp // frequency * frequency)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, target_sparsity, begin_step=0, end_step=end_step,
                                                    frequency=frequency)
    ends = unpruned(model)
    return _wrap(model, lambda layer: tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule),
                 lambda layer: isinstance(layer, COMPRESSIBLE) and layer.name not in ends, "pruning", ends)


def unpruned(model: keras.Model) -> frozenset[str]:
    """The layers pruning leaves dense: the first and the last Dense or Conv2D (when there are more than two)."""
    compressible = [layer.name for layer in model.layers if isinstance(layer, COMPRESSIBLE)]
    return frozenset({compressible[0], compressible[-1]} if len(compressible) > 2 else ())


def cluster(model: keras.Model, clusters: int) -> keras.Model:
    """Weight clustering: each layer's weights share `clusters` values (k-means++ initialised)."""
    init = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS
    return _wrap(model, lambda layer: tfmot.clustering.keras.cluster_weights(
        layer, number_of_clusters=clusters, cluster_centroids_init=init),
        lambda layer: isinstance(layer, COMPRESSIBLE), "clustering")


def quantize_aware(model: keras.Model, preserve_sparsity: bool = False) -> keras.Model:
    """Quantization-aware training wrappers (8-bit); with `preserve_sparsity`, pruned zeros stay
    zero (pruning-preserving QAT)."""
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    annotated = _wrap(model, tfmot.quantization.keras.quantize_annotate_layer,
                      lambda layer: isinstance(layer, COMPRESSIBLE) and registry.supports(layer),
                      "quantization-aware training")
    scheme = (default_8bit_prune_preserve_quantize_scheme.Default8BitPrunePreserveQuantizeScheme()
              if preserve_sparsity else None)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(annotated, scheme) if scheme else \
            tfmot.quantization.keras.quantize_apply(annotated)


def savable(model: keras.Model) -> keras.Model:
    """`model`, or for a QAT model the same model rebuilt from its config, which the .keras format
    can save and load.

    QuantizeWrapperV2.build lists the wrapped layer's weights among its own variables, and each
    quantized kernel once more: a Conv2D or Dense wrapped by quantize_apply (already built) owns 8
    variables, one rebuilt from its config (as load_model does) 6. The .keras format saves and
    loads each layer's own variables by position, so the model as quantize_apply made it does not
    load ("Layer 'quant_conv2d' expected 6 variables, but received 8"). Rebuilt after fine-tuning,
    not before: pruning-preserving QAT computes its sparsity mask from the kernel when it builds.
    """
    if not any(isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2) for layer in model.layers):
        return model
    with tfmot.quantization.keras.quantize_scope():
        rebuilt = keras.Model.from_config(model.get_config())
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def unsupported(names: tuple[str, ...], trained: keras.Model, clusters: int,
                representative: np.ndarray) -> dict[str, str]:
    """The variants among `names` that cannot be made from `trained`, with the reason: checked before
    any fine-tuning (wrapping a model takes a second, fine-tuning minutes). Fine-tuning changes
    weights, not the graph, so a QAT wrapper that converts to int8 now converts after fine-tuning."""
    from pipeline.compression.tflite import ConversionFailed, to_tflite

    checks = {"pruned": lambda: prune(trained, 0.5, steps=10), "cluster": lambda: cluster(trained, clusters),
              "qat": lambda: to_tflite(quantize_aware(trained), "int8", representative)}
    needs = {"pruned": ("pruned",), "cluster": ("cluster",), "qat": ("qat",), "pqat": ("pruned", "qat")}
    if not (trained._is_graph_network or isinstance(trained, keras.Sequential)):
        why = (f"TFMOT rewrites the layers of functional and Sequential models, and {type(trained).__name__} is "
               f"a subclassed model (its call() is opaque to it); build it with the functional API to compress it")
        return {name: why for name in names if name in needs}
    problems = {}
    with warnings.catch_warnings(), tfmot_scope():
        warnings.simplefilter("ignore")
        for check in sorted({c for name in names for c in needs.get(name, ())}):
            try:
                checks[check]()
            except NothingToCompress as e:
                problems[check] = str(e)
            except ConversionFailed as e:
                problems[check] = f"TFLite cannot convert its int8 form ({e})"
            except (ValueError, TypeError) as e:  # a layer of the user's, which TFMOT has no rule for
                custom = [f"{layer.name} ({type(layer).__name__})" for layer in trained.layers
                          if not type(layer).__module__.startswith(("tf_keras.", "keras."))]
                problems[check] = (f"TFMOT cannot wrap a layer of this model (custom layers: {custom or 'none'}): "
                                   f"{type(e).__name__}: {e}")
    return {name: problems[c] for name in names for c in needs.get(name, ()) if c in problems}


def strip(model: keras.Model) -> keras.Model:
    """Remove pruning and clustering wrappers: a plain Keras model with the compressed weights."""
    return tfmot.clustering.keras.strip_clustering(tfmot.sparsity.keras.strip_pruning(model))


class Distiller(keras.Model):
    """Train `student` on hard labels and on the `teacher`'s soft labels at `temperature`.

    Both models end in softmax; log-probabilities divided by the temperature are softened logits.
    """

    def __init__(self, student: keras.Model, teacher: keras.Model, temperature: float, alpha: float):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.temperature, self.alpha = temperature, alpha
        self.hard_loss = keras.losses.SparseCategoricalCrossentropy()
        self.soft_loss = keras.losses.KLDivergence()

    def train_step(self, data):
        x, y = data
        soft_targets = self._soften(self.teacher(x, training=False))
        with tf.GradientTape() as tape:
            predicted = self.student(x, training=True)
            loss = self.alpha * self.hard_loss(y, predicted) + (1 - self.alpha) * self.temperature ** 2 * \
                self.soft_loss(soft_targets, self._soften(predicted))
        self.optimizer.apply_gradients(zip(tape.gradient(loss, self.student.trainable_variables),
                                           self.student.trainable_variables))
        return {"loss": loss}

    def _soften(self, probabilities):
        return tf.nn.softmax(tf.math.log(probabilities + 1e-8) / self.temperature)

    def call(self, x, training=False):
        return self.student(x, training=training)


def train_variants(names: tuple[str, ...], trained: keras.Model, train: Split, val_inputs: np.ndarray,
                   spec: DataSpec, settings, strategy: tf.distribute.Strategy) -> dict[str, keras.Model]:
    """Each variant in `names`, fine-tuned from `trained` (the distilled student trained from scratch, stopped by
    its agreement with `trained` on `val_inputs`).

    `settings` is the compress stage's view: compress.*, model.*, train.batch_size and
    train.learning_rate. TFMOT wrappers are created and fine-tuned in `strategy`'s scope;
    warnings (layers left uncompressed) are printed, one line each.
    """
    c = settings.compress
    steps = c.fine_tune_epochs * int(np.ceil(len(train.y) / settings.train.batch_size))
    fit = dict(x=train.x, y=train.y, batch_size=settings.train.batch_size, epochs=c.fine_tune_epochs, verbose=0)
    learning_rate = settings.train.learning_rate / 3
    variants = {}
    with strategy.scope(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in names:
            print(f"compress: {name}", flush=True)
            if name in ("pruned", "pqat") and "pruned" not in variants:
                print(f"compress: pruning leaves the first and the last layer dense: "
                      f"{', '.join(sorted(unpruned(trained))) or 'none (two layers or fewer)'}")
                variants["pruned"] = fine_tune(prune(trained, c.target_sparsity, steps), spec.task, learning_rate,
                                               fit, [tfmot.sparsity.keras.UpdatePruningStep()])
            if name == "qat":
                variants["qat"] = fine_tune(quantize_aware(trained), spec.task, learning_rate, fit)
            elif name == "pqat":
                variants["pqat"] = fine_tune(quantize_aware(variants["pruned"], True), spec.task, learning_rate, fit)
            elif name == "cluster":
                variants["cluster"] = fine_tune(cluster(trained, c.clusters), spec.task, learning_rate, fit)
            elif name == "distilled":
                variants["distilled"] = distill(trained, train, val_inputs, spec, settings)
        for warning in caught:
            print(f"compress: warning: {warning.message}")
    return {name: variants[name] for name in names}


def fine_tune(model: keras.Model, task: str, learning_rate: float, fit: dict,
              callbacks: list | None = None) -> keras.Model:
    """A few epochs of training with the compression wrappers in place, then the wrappers stripped."""
    model.compile(**compile_settings(task, learning_rate))
    model.fit(**fit, callbacks=callbacks or [])
    return strip(model)


def distill(teacher: keras.Model, train: Split, val_inputs: np.ndarray, spec: DataSpec, settings) -> keras.Model:
    """A narrower student (`compress.student_width`) trained on the teacher's soft labels, as long as it learns:
    up to `distill_epochs`, stopped `distill_patience` epochs after its best agreement with the teacher on
    `val_inputs`, whose weights it keeps. A fixed 20 epochs left digits' student 1 to 6 points below its teacher;
    stopped this way it stays within a point on most initialisations (benchmarks/results/compression.md).
    A student that still disagrees with its teacher on more than `max_accuracy_drop` of those rows (the most it
    could lose against it) is trained again from another initialisation, up to `distill_tries` students; the
    one that agrees best is kept. Only the inputs of the validation rows are used: their labels are the gate's,
    and a student chosen on them would look better there than it is."""
    c = settings.compress
    teacher_classes = teacher.predict(val_inputs, verbose=0).argmax(axis=1)
    best, best_agreement = None, -1.0
    for attempt in range(1, c.distill_tries + 1):
        student = build_model(replace(settings.model, width=c.student_width), spec)
        distiller = Distiller(student, teacher, c.distill_temperature, c.distill_alpha)
        distiller.compile(optimizer=keras.optimizers.Adam(settings.train.learning_rate))
        stop = BestAgreement(student, val_inputs, teacher_classes, c.distill_patience)
        distiller.fit(train.x, train.y, batch_size=settings.train.batch_size, epochs=c.distill_epochs, verbose=0,
                      callbacks=[stop])
        print(f"compress: distilled: student {attempt} agrees with its teacher on {stop.best:.1%} of the validation "
              f"rows after {stop.best_epoch} epochs (of {stop.epochs_run} run)")
        if stop.best > best_agreement:
            best, best_agreement = student, stop.best
        if best_agreement >= 1 - c.max_accuracy_drop:
            break
    return best


class BestAgreement(keras.callbacks.Callback):
    """Early stopping on the share of `inputs` where `student` predicts the teacher's class (`teacher_classes`);
    the student ends with the weights of its best epoch."""

    def __init__(self, student: keras.Model, inputs: np.ndarray, teacher_classes: np.ndarray, patience: int):
        super().__init__()
        self.student, self.inputs, self.teacher_classes, self.patience = student, inputs, teacher_classes, patience
        self.best, self.best_epoch, self.epochs_run, self.weights = -1.0, 0, 0, None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_run = epoch + 1
        classes = self.student(self.inputs, training=False).numpy().argmax(axis=1)  # one call: predict() would build
        agreement = float((classes == self.teacher_classes).mean())  # a dataset each epoch
        if agreement > self.best:
            self.best, self.best_epoch, self.weights = agreement, epoch + 1, self.student.get_weights()
        elif epoch + 1 - self.best_epoch >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        self.student.set_weights(self.weights)
