"""The tf.distribute strategy a config names, the TF_CONFIG it runs under, and its datasets."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import get_args

import tensorflow as tf
import tf_keras as keras

from pipeline.specs import Strategy

TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
JOBS = {"multi_worker": {"chief", "worker"}, "parameter_server": {"chief", "worker", "ps"}}


def make_strategy(name: Strategy, partitioner=None) -> tf.distribute.Strategy:
    """`default`: one device. `mirrored`: every local GPU, or every logical CPU device if none.
    `multi_worker` and `parameter_server`: the cluster in TF_CONFIG (this process is the
    parameter_server coordinator, the chief); `partitioner` (parameter_server only, see
    `variable_partitioner`) splits large variables into shards on different ps.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "parameter_server":
        return tf.distribute.experimental.ParameterServerStrategy(
            tf.distribute.cluster_resolver.TFConfigClusterResolver(), variable_partitioner=partitioner)
    raise ValueError(f"unknown strategy {name!r}; expected one of {get_args(Strategy)}")


def variable_partitioner(train, ps: int):
    """TF's partitioner for train.partition (None for "none"): `fixed` N shards per variable; `min_size` and
    `max_size` as many as the byte bounds ask, at most one per parameter server. TF applies it to every
    variable, and variables smaller than a shard's bound stay whole."""
    partitioners = tf.distribute.experimental.partitioners
    if train.partition == "fixed":
        return partitioners.FixedShardsPartitioner(train.partition_shards or ps)
    if train.partition == "min_size":
        return partitioners.MinSizePartitioner(min_shard_bytes=train.partition_min_shard_bytes, max_shards=ps)
    if train.partition == "max_size":
        return partitioners.MaxSizePartitioner(max_shard_bytes=train.partition_max_shard_bytes, max_shards=ps)
    return None


def shard_bound_problem(train, variables: list) -> str | None:
    """Why train.partition_max_shard_bytes cannot be honoured (None when it can): a shard holds whole rows, so a
    bound below one row of a variable would leave TensorFlow to break it silently."""
    if train.partition != "max_size":
        return None
    rows = [(math.prod(v.shape[1:]) * v.dtype.size, v) for v in variables if v.shape.rank]
    if not rows:
        return None
    row_bytes, widest = max(rows, key=lambda pair: pair[0])
    if train.partition_max_shard_bytes >= row_bytes:
        return None
    return (f"train.partition_max_shard_bytes: {train.partition_max_shard_bytes} bytes is less than one row of "
            f"{widest.name} ({row_bytes} bytes: {widest.shape[1:].as_list()} x {widest.dtype.name}); a shard holds "
            f"whole rows: expected at least {row_bytes}.")


def shard_groups(variables: list) -> dict[str, list]:
    """Variable name -> its shards in order: a sharded variable's parts are listed one by one, named
    `<name>/part_<i>:0` (a whole variable is a group of one)."""
    groups: dict[str, list] = {}
    for variable in variables:
        groups.setdefault(re.sub(r"/part_\d+:\d+$", "", variable.name).removesuffix(":0"), []).append(variable)
    return groups


def placement(variables: list) -> list[dict]:
    """Where each variable lives: its shape and, per shard, the rows it holds and its device (a ShardedVariable
    is split along its first axis, its shards on different parameter servers)."""
    report = []
    for name, shards in shard_groups(variables).items():
        first, rows = 0, []
        for shard in shards:
            size = int(shard.shape[0]) if shard.shape.rank else 1
            rows.append({"rows": [first, first + size - 1], "device": shard.device})
            first += size
        shape = shards[0].shape.as_list()
        report.append({"name": name, "shape": [first, *shape[1:]] if shape else [], "shards": rows})
    return report


def in_process_strategy(name: Strategy) -> tf.distribute.Strategy:
    """The strategy for work done inside the stage's own process (tuning trials, compression
    fine-tuning): the configured one when it is local, else the default one, said aloud."""
    if name in ("default", "mirrored"):
        return make_strategy(name)
    print(f"this stage runs in one process; train.strategy={name} applies to training only")
    return make_strategy("default")


def parse_tf_config(text: str, strategy: Strategy) -> dict:
    """TF_CONFIG checked for `strategy`, so a bad cluster fails here with its reason, not in gRPC."""
    fix = f"Set TF_CONFIG like {TF_CONFIG_EXAMPLE}, or unset it to launch local workers."
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e.msg}); received {text!r}. {fix}") from None
    cluster, task = (config.get("cluster"), config.get("task")) if isinstance(config, dict) else (None, None)
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' mapping and a 'task' mapping; received {text!r}. {fix}")
    jobs = JOBS[strategy]
    unknown = sorted(set(cluster) - jobs)
    if unknown:
        raise ValueError(f"TF_CONFIG cluster has job(s) {unknown}, which {strategy} does not use; "
                         f"expected only {sorted(jobs)}. {fix}")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f"TF_CONFIG cluster has no 'worker' or 'chief' addresses; received {text!r}. {fix}")
    if strategy == "parameter_server":
        missing = [job for job in ("chief", "worker", "ps") if not cluster.get(job)]
        if missing:
            raise ValueError(f"TF_CONFIG cluster for parameter_server has no {missing} job: it needs a 'chief' "
                             f"(the coordinator), 'worker' and 'ps' addresses; received jobs {sorted(cluster)}.")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f"TF_CONFIG task {task_type}:{index} is not in the cluster {cluster}; expected a "
                         f"'type' among {sorted(cluster)} and an 'index' below that job's number of addresses.")
    return config


def is_chief(config: dict) -> bool:
    """The chief task, or worker 0 when the cluster has no chief (TensorFlow's convention)."""
    task = config["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0
                                       and "chief" not in config["cluster"])


def make_dataset(x, y, global_batch: int, shuffle_seed: int | None = None, augment: Callable | None = None,
                 repeat: bool = False) -> tf.data.Dataset:
    """A batched, prefetched dataset, augmented per example when `augment` is given (training); shards by data
    across workers and replicas."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.batch(global_batch).prefetch(tf.data.AUTOTUNE).with_options(options)


def make_dataset_creator(x, y, global_batch: int, shuffle_seed: int | None = None, augment: Callable | None = None
                         ) -> tuple[keras.utils.experimental.DatasetCreator, int]:
    """Per-worker, endlessly repeated input for ParameterServerStrategy, and the steps in one epoch.

    Each worker builds its own pipeline (its shard of the rows) from this function.
    """
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        if shuffle_seed is not None:
            ds = ds.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
        batch = context.get_per_replica_batch_size(global_batch)
        ds = ds.repeat()
        if augment is not None:
            ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch).prefetch(tf.data.AUTOTUNE)

    return keras.utils.experimental.DatasetCreator(dataset_fn), math.ceil(len(x) / global_batch)
