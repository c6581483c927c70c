"""The tf.distribute strategy a config names, and the global batch size it implies."""
from __future__ import annotations

from typing import Literal, get_args

import tensorflow as tf

Strategy = Literal["default", "mirrored"]


def make_strategy(name: Strategy) -> tf.distribute.Strategy:
    """`default`: one device. `mirrored`: every local GPU, or every logical CPU device if none."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    raise ValueError(f"unknown strategy {name!r}; expected one of {get_args(Strategy)}")


def make_dataset(x, y, global_batch: int, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """A batched, prefetched dataset; shards by data across workers and replicas."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(global_batch).prefetch(tf.data.AUTOTUNE).with_options(options)
