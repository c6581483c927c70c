"""Integrated gradients computed inside the SavedModel's graph: what its `explain` signature answers
(pipeline.saved_model adds the signature; export decides whether).

Integrated gradients (Sundararajan et al., 2017) share a model's output F(x) − F(b) out among the input's values:
value i gets (x_i − b_i) times the mean of ∂F/∂x_i along the straight path from the baseline b to x, so that the
shares add up to F(x) − F(b) (completeness), up to the error of the rule that takes the mean. Here:
- F is the predicted class's probability (classification) or the predicted value (regression);
- the baseline is a black image (zeros) when the model reads images, the train split's mean row otherwise;
- the mean is a Riemann sum at the midpoints of `steps` equal intervals, chosen over the trapezoid rule for its
  smaller completeness error at the same steps (benchmarks/results/explain.md): half of it on the GRU, whose F is
  smooth (as theory says for the two rules), and on the ReLU models, whose kinks make both rules first order, about
  the same on the median row and smaller on the worst. Both ends of the path are computed too (weight 0), for `score` and `baseline_score`:
  steps + 2 points a row;
- every point of every row's path is one row of one batch, run forward and back in one graph call;
- a categorical column or a text's tokens reach the model as indices, which have no gradient: their path runs in
  embedding space instead, the model run in two parts around its Embedding layers. A category starts from the train
  split's mean embedding of its column (the mean row's share), a token from zeros (padding stays where it is, so
  it gets 0); each column's share, or each token's, is the sum over its embedding's values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tf_keras as keras

from pipeline.artifacts import categorical_features

BASELINE_ROWS = 4096  # train rows per batch when the categories' mean embeddings are computed


class NotExplainable(ValueError):
    """The model has an input whose share integrated gradients cannot compute (the message names it)."""


@dataclass(frozen=True)
class Plan:
    """Where each input's path runs: the numbers' from `numbers` (None for text), and each embedded input's from its
    baseline embedding (by the id of the Keras node that embeds it)."""

    task: str  # classification: the score is the predicted class's probability; regression: the predicted value
    steps: int
    numbers: np.ndarray | None  # the baseline row of the numbers (or decoded pixels) the model reads
    embedded: dict[int, "Embedded"]
    vectorizer: keras.layers.TextVectorization | None  # text: splits it into the tokens of the `tokens` output
    image_shape: tuple[int, ...] | None  # image files: [height, width, channels], each row's attributions' shape (the
    # decoded pixels'; x itself is a string)
    baseline: str  # in words, for explain.json and the README

    def description(self) -> dict:
        """What explain.json says of the signature."""
        score = "the predicted class's probability" if self.task == "classification" else "the predicted value"
        return {"method": "integrated gradients", "rule": "Riemann sum at the midpoints", "steps": self.steps,
                "points_per_row": self.steps + 2, "baseline": self.baseline, "score": score}


@dataclass(frozen=True)
class Embedded:
    name: str  # the input it embeds: a categorical column, or "x" for text
    baseline: np.ndarray | None  # the path's start in embedding space; None: zeros at each token, padding as it is


def plan(model: keras.Model, schema: dict, train_x: np.ndarray, steps: int) -> Plan:
    """How `explain` runs on `model` for data described by `schema` (`train_x`: the train split's rows as the model
    takes them, categorical columns as indices); NotExplainable naming an input it cannot attribute to."""
    kind = schema.get("kind", "numeric")
    categorical = [f["name"] for f in categorical_features(schema)]
    if kind == "text":
        node, vectorizer = _text_embedding(model)
        found = Plan(schema["task"], steps, None, {id(node): Embedded("x", None)}, vectorizer, None,
                     "for each token, a zero embedding (padding keeps its own, so it gets 0)")
    else:
        n = train_x.shape[1] - len(categorical)
        numbers = (np.zeros(n, np.float32) if reads_images(schema) else
                   np.array([f["mean"] for f in schema["features"][:n]], np.float32))
        baseline = "a black image (every pixel 0)" if reads_images(schema) else "the train split's mean row"
        embedded = _category_embeddings(model, categorical, train_x) if categorical else {}
        if categorical:
            baseline += "; for each categorical column, its mean embedding over the train split"
        found = Plan(schema["task"], steps, numbers, embedded, None,
                     tuple(schema["input_shape"]) if kind == "image" else None,
                     baseline)
    probe = (tf.constant(["a"]) if kind == "text" else tf.constant(found.numbers[None]),
             tf.zeros([1, len(categorical)]) if categorical else None)
    attribute(model, found, *probe)  # eagerly, once: an input without a gradient is found now
    return found


def reads_images(schema: dict) -> bool:
    """Whether the model reads images: files, or rows of pixels in an image's shape (digits: [8, 8, 1])."""
    return schema.get("kind") == "image" or len(schema["input_shape"]) == 3


def completeness_errors(answer: dict[str, np.ndarray], least: float) -> np.ndarray:
    """For each row of an explain answer whose score moved at least `least` from the baseline's: how far the sum of
    its shares is from that move, relative to it (completeness says 0; the rule's error over the steps leaves some).
    Below `least`, a few thousandths of a probability of error would read as a large fraction of nothing."""
    move = answer["score"].astype(np.float64) - answer["baseline_score"]
    shares = sum(value.reshape(len(move), -1).sum(axis=1, dtype=np.float64) for name, value in answer.items()
                 if name.startswith(("attributions", "token_attributions")))
    kept = np.abs(move) >= least
    return np.abs(shares[kept] - move[kept]) / np.abs(move[kept])


def completeness(answer: dict[str, np.ndarray], least: float) -> dict:
    """completeness_errors summed up: on how many rows, their median, 95th percentile and largest, and the fraction
    within 5 %."""
    errors = completeness_errors(answer, least)
    if not errors.size:
        return {"rows": 0, "least_move": least, "median": None, "p95": None, "max": None, "within_5_percent": None}
    return {"rows": int(errors.size), "least_move": least, "median": round(float(np.median(errors)), 5),
            "p95": round(float(np.percentile(errors, 95)), 5), "max": round(float(errors.max()), 5),
            "within_5_percent": round(float(np.mean(errors <= 0.05)), 4)}


def attribute(model: keras.Model, plan: Plan, x, indices) -> dict:
    """The explain outputs for a batch: `x` the numbers (or decoded pixels) the model reads, float32 [rows, n], or
    the texts, string [rows]; `indices` the categorical columns' indices, float32 [rows, k], or None.
    NotExplainable when an input gets no gradient (at trace time in a graph). Written with broadcasts and static
    shapes: every op here is in the SavedModel's graph, and it should not grow by much."""
    alphas, weights = path_points(plan.steps)
    points = len(alphas)

    def over_points(values: np.ndarray, rank: int):  # [points] as a constant that broadcasts over [rows, points, ...]
        return tf.constant(values.reshape([points] + [1] * (rank - 2)), tf.float32)

    def flat(t):  # [rows, points, ...] -> the batch the model runs, [rows * points, ...]
        return tf.reshape(t, [-1, *t.shape[2:]])

    def per_row(t):  # and back
        return tf.reshape(t, [-1, points, *t.shape[1:]])

    def along(t):  # each row at every point
        return flat(tf.tile(tf.expand_dims(t, 1), [1, points] + [1] * (t.shape.rank - 1)))

    watched, moved = [], []
    with tf.GradientTape(watch_accessed_variables=False) as tape:  # no gradients of the weights: fewer ops
        if plan.numbers is None:
            model_x = along(x)
        else:
            alpha, baseline = over_points(alphas, 3), tf.constant(plan.numbers)
            path = flat(tf.expand_dims(x, 1) * alpha + baseline * (1 - alpha))  # x exactly at 1, the baseline at 0
            tape.watch(path)
            watched.append(("x", path))
            model_x = path if indices is None else tf.concat([path, along(indices)], axis=1)

        def cut(node, inputs, embedding):
            which = plan.embedded.get(id(node))
            if which is None:
                return embedding
            at_points = per_row(embedding)
            alpha = over_points(alphas, at_points.shape.rank)
            start = which.baseline if which.baseline is not None else \
                tf.where(tf.equal(per_row(inputs), 0)[..., None], at_points, 0.0)  # tokens from 0; padding stays
            point = flat(at_points * alpha + start * (1 - alpha))
            tape.watch(point)
            point._keras_mask = getattr(embedding, "_keras_mask", None)  # masking still sees the padding
            watched.append((which.name, point))
            moved.append((which, (at_points - start)[:, -1], per_row(inputs)[:, -1]))
            return point

        y = per_row(run_around(model, model_x, cut) if plan.embedded else model(model_x, training=False))
    outputs, chosen = {}, tf.ones([1, 1, 1])  # regression: F is the one output
    if plan.task == "classification":  # F is the probability of the class predicted at the input (point 1)
        outputs["class_id"] = tf.argmax(tf.gather(y, points - 1, axis=1), axis=-1)
        chosen = tf.expand_dims(tf.one_hot(outputs["class_id"], y.shape[-1]), 1)
    scores = tf.reduce_sum(y * chosen, axis=-1)  # [rows, points]: F along each row's path
    gradients = tape.gradient(y, [t for _, t in watched], output_gradients=tf.broadcast_to(chosen, tf.shape(y)))
    for (name, _), gradient in zip(watched, gradients):
        if gradient is None:
            raise NotExplainable(f"input {name!r}: the model's output has no gradient with respect to it (an integer "
                                 f"cast, a rounding or a lookup in the model cuts the path), so integrated gradients "
                                 f"cannot give it a share; the model is exported without the explain signature.")
    means = [tf.reduce_sum(per_row(g) * over_points(weights, g.shape.rank + 1), axis=1) for g in gradients]

    outputs["baseline_score"], outputs["score"] = tf.unstack(tf.gather(scores, [0, points - 1], axis=1), axis=1)
    if plan.numbers is not None:
        shares = (x - baseline) * means.pop(0)
        outputs["attributions"] = tf.reshape(shares, [-1, *plan.image_shape]) if plan.image_shape else shares
    for (which, difference, inputs), mean in zip(moved, means):
        shares = tf.reduce_sum(difference * mean, axis=-1)
        if which.baseline is None:
            outputs["token_attributions"] = shares
            outputs["tokens"] = tf.where(tf.equal(inputs, 0), "", _words(plan.vectorizer, x, shares.shape[-1]))
        else:
            outputs[f"attributions_{which.name}"] = shares
    return outputs


def path_points(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the path is evaluated (0 the baseline, 1 the input): both ends, for the scores, and the midpoints of
    `steps` equal intervals; and each point's weight in the mean gradient (the ends' is 0)."""
    alphas = np.concatenate([[0.0], (np.arange(steps) + 0.5) / steps, [1.0]])
    weights = np.concatenate([[0.0], np.full(steps, 1.0 / steps), [0.0]])
    return alphas, weights


def run_around(model: keras.Model, x, cut):
    """`model(x)` computed node by node, as Keras's Functional._run_internal_graph does, each node's output passed
    through `cut(node, its first input, output)`: the model run in parts around the layers that `cut` replaces."""
    computed = {}

    def keep(key: str, value) -> None:  # a node's arguments are popped from here, once per use
        computed[key] = [value] * model._tensor_usage_count[key]

    keep(str(id(model.inputs[0])), x)
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(key not in computed for key in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(computed)
            outputs = cut(node, args[0], node.layer(*args, **{**kwargs, "training": False}))
            for key, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                keep(key, value)
    return computed[str(id(model.outputs[0]))][0]


def _embedding_nodes(model: keras.Model, what: str) -> list:
    """The nodes of `model`'s graph that call an Embedding layer; NotExplainable when it has no graph to cut."""
    if not getattr(model, "_is_graph_network", False) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NotExplainable(f"{what}: integrated gradients run over its embeddings, which means running the model "
                             f"in parts around its Embedding layers; {model.name!r} is not a functional model of one "
                             f"input and one output (a subclassed model has no graph of layers to cut).")
    return [node for nodes in model._nodes_by_depth.values() for node in nodes
            if isinstance(node.layer, keras.layers.Embedding)]


def _text_embedding(model: keras.Model):
    """The node embedding the TextVectorization's tokens, and that layer."""
    what = "input 'x' (text)"
    for node in _embedding_nodes(model, what):
        if isinstance(node.inbound_layers, keras.layers.TextVectorization):
            return node, node.inbound_layers
    raise NotExplainable(f"{what}: no Embedding layer takes the tokens of a TextVectorization layer in "
                         f"{model.name!r}, and integrated gradients run over the tokens' embeddings.")


def _category_embeddings(model: keras.Model, names: list[str], train_x: np.ndarray) -> dict[int, Embedded]:
    """The Embedding node of each categorical column (found by moving one column at a time and seeing which node's
    input moves), with the column's mean embedding over the train rows."""
    k = len(names)
    nodes = {id(node) for node in _embedding_nodes(model, f"categorical input(s) {names}")}
    probe = np.zeros((k + 1, train_x.shape[1]), np.float32)
    probe[np.arange(1, k + 1), train_x.shape[1] - k + np.arange(k)] = 1  # row 1 + j: column j's index moved to 1
    moved_by = {}

    def record(node, inputs, embedding):
        if id(node) in nodes:
            moved_by[id(node)] = inputs
        return embedding

    run_around(model, tf.constant(probe), record)
    readers: dict[int, list[int]] = {}
    for key, inputs in moved_by.items():
        values = np.reshape(inputs.numpy(), (k + 1, -1))
        columns = [j for j in range(k) if (values[1 + j] != values[0]).any()]
        if values.shape[1] == 1 and len(columns) == 1:
            readers.setdefault(columns[0], []).append(key)
    for j, name in enumerate(names):
        if len(readers.get(j, [])) != 1:
            raise NotExplainable(
                f"input {name!r} (a categorical column) reaches the model through "
                f"{'several Embedding layers' if readers.get(j) else 'no Embedding layer of its own'}; integrated "
                f"gradients run over a column's embedding (its index has no meaningful gradient), so the model is "
                f"exported without the explain signature. Embed each categorical column once, as "
                f"models.layers.embedded_categories does.")
    owner = {readers[j][0]: j for j in range(k)}
    sums = dict.fromkeys(owner, 0.0)

    def add(node, inputs, embedding):
        if id(node) in sums:
            sums[id(node)] += tf.reduce_sum(embedding, axis=0).numpy()
        return embedding

    for start in range(0, len(train_x), BASELINE_ROWS):
        run_around(model, tf.constant(train_x[start:start + BASELINE_ROWS], tf.float32), add)
    return {key: Embedded(names[j], (sums[key] / len(train_x)).astype(np.float32)) for key, j in owner.items()}


def _words(vectorizer: keras.layers.TextVectorization, texts, length: int):
    """Each text's first `length` words as the model's TextVectorization splits them (its own standardize and split,
    so a word out of the vocabulary shows as written), "" where there are fewer."""
    return vectorizer._preprocess(texts).to_tensor(default_value="", shape=[None, length])
