"""Train the configured model under the configured tf.distribute strategy.

`multi_worker` starts `train.workers` local processes, or, when TF_CONFIG is already set (a
cluster, see pipeline.k8s), runs as the one task it names; `parameter_server` starts a
coordinator (the chief) and `train.workers` + `train.ps` servers (pipeline.training.fit). Every
strategy backs up each epoch (BackupAndRestore), so re-running a stage that was killed resumes
after its last finished epoch. `train.init_from` continues from a published version instead of
starting from scratch (online updates).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

import repository
from models import model_code_files, user
from pipeline.errors import StageError
from pipeline.registry import Registry, RegistryError
from pipeline.training import Strategy


@dataclass(frozen=True)
class Config:
    epochs: int = 20  # passes over the train split (fewer if early stopping ends it)
    batch_size: int = 64  # global batch; split across replicas
    strategy: Strategy = "default"  # tf.distribute: one device, all local devices, workers, parameter servers
    workers: int = 1  # multi_worker, parameter_server: worker processes (local ones when TF_CONFIG is unset)
    ps: int = 1  # parameter_server: parameter server processes
    partition: Literal["none", "min_size", "fixed", "max_size"] = "none"  # parameter_server: split large variables
    # (embedding tables) into shards on different ps (model parallel): tf.distribute.experimental.partitioners
    partition_shards: int = 0  # partition=fixed: shards per variable (at most train.ps); 0 = train.ps
    partition_min_shard_bytes: int = 256 << 10  # partition=min_size: no shard smaller than this (TF's default)
    partition_max_shard_bytes: int = 0  # partition=max_size: no shard larger than this (required)
    backup_dir: str = ""  # BackupAndRestore's dir; "" = .backup/<hash of config and inputs> beside the output
    init_from: str = ""  # online update: "latest", a version number or "label:NAME" (registry) in
    # push.repository/push.model_name, or a version directory, to warm-start from instead of from scratch
    loop: Literal["fit", "custom"] = "fit"  # custom: strategy.run + GradientTape (pipeline.training.custom_loop)
    step: str = ""  # loop=custom: a train_step(model, batch, optimizer) -> (loss, predictions) of yours, as
    # package.module:function or path/to/file.py:function; "" = the default step
    learning_rate: float = 0.003  # Adam's
    early_stopping_patience: int = 5  # epochs without val_loss improvement; 0 = never stop early
    verbose: int = 2  # Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch

    def problems(self) -> list[str]:
        found = []
        for name in ("epochs", "batch_size", "workers", "ps"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        if self.loop == "custom" and self.strategy == "parameter_server":
            found.append("loop: 'custom' runs strategy.run on the replicas of the default, mirrored or multi_worker "
                         "strategy; parameter_server schedules steps through a ClusterCoordinator: use "
                         "train.loop=fit with it.")
        if self.step and self.loop != "custom":
            found.append(f"step: a train step ({self.step!r}) replaces the custom loop's; set train.loop=custom too.")
        elif self.step:
            problem = user.reference_problem(self.step)
            found += [f"step: {problem}"] if problem else []
        found += self._partition_problems()
        if self.learning_rate <= 0:
            found.append(f"learning_rate: expected a positive number, received {self.learning_rate}.")
        return found

    def _partition_problems(self) -> list[str]:
        defaults = {f.name: f.default for f in fields(self)}
        changed = [k for k in PARTITION_KEYS.values() if getattr(self, k) != defaults[k]]
        if self.partition == "none":
            return [f"{k}: set ({getattr(self, k)}) but train.partition is 'none'; set train.partition too."
                    for k in changed]
        if self.strategy != "parameter_server":
            return [f"partition: {self.partition!r} shards variables across parameter servers; it needs "
                    f"train.strategy=parameter_server, received {self.strategy!r} (mirrored and multi_worker keep a "
                    f"whole copy of every variable on each replica)."]
        wanted = PARTITION_KEYS[self.partition]
        owner = {key: partition for partition, key in PARTITION_KEYS.items()}
        found = [f"{k}: applies to train.partition={owner[k]!r}, not {self.partition!r}." for k in changed if k != wanted]
        if self.partition == "fixed" and self.partition_shards > self.ps:
            found.append(f"partition_shards: {self.partition_shards} shards over train.ps={self.ps} parameter servers: "
                         f"TensorFlow would place them round robin, several on one server, which splits no memory "
                         f"further; expected at most {self.ps}.")
        if self.partition == "fixed" and self.partition_shards < 0:
            found.append(f"partition_shards: expected a positive integer (or 0 for train.ps), received "
                         f"{self.partition_shards}.")
        if self.partition in ("min_size", "max_size") and getattr(self, wanted) < 1:
            found.append(f"{wanted}: expected a positive number of bytes, received {getattr(self, wanted)}.")
        return found


PARTITION_KEYS = {"fixed": "partition_shards", "min_size": "partition_min_shard_bytes",
                  "max_size": "partition_max_shard_bytes"}

CONFIG = ("seed", "model", "data.augment", "train.epochs", "train.batch_size", "train.strategy", "train.workers", "train.ps",
          "train.partition", "train.partition_shards", "train.partition_min_shard_bytes", "train.partition_max_shard_bytes",
          "train.backup_dir", "train.init_from", "train.loop", "train.step", "train.learning_rate",
          "train.early_stopping_patience")
# push.* only locate the version train.init_from names; `resolve` turns that into a path, which is keyed.
RUNTIME = ("train.verbose", "push.repository", "push.model_name")
INPUTS = ("dataset", "schema", "hyperparameters")
OUTPUTS = ("model",)


def resolve(cfg):
    """train.init_from as the absolute path of the version it names, before the cache key is computed:
    `latest` then keys on the version it means today, and push.* matter only when it is set."""
    if not cfg.train.init_from:
        return cfg
    source = init_source(cfg.train.init_from, Path(cfg.push.repository) / cfg.push.model_name)
    return replace(cfg, train=replace(cfg.train, init_from=str(source.resolve())))


def init_source(name: str, model_dir: Path) -> Path:
    """The published version `name` means: "latest", a version number or "label:NAME" in `model_dir`, or a
    version directory."""
    available = repository.versions(model_dir)
    if name.startswith("label:"):
        try:
            with Registry(model_dir.parent, create=False) as registry:
                name = str(registry.resolve(model_dir.name, name))
        except RegistryError as e:
            raise StageError(f"train.init_from={name}: {e}") from None
    if name == "latest":
        if not available:
            raise StageError(f"train.init_from=latest: {model_dir} holds no version to start from; "
                             f"push one first, or set train.init_from=\"\".")
        return available[max(available)]
    path = model_dir / name if repository.version_number(name) is not None else Path(name)
    if not (path / "keras_metadata.pb").is_file():
        raise StageError(f"train.init_from={name}: {path} is not a version this pipeline exported "
                         f"(versions in {model_dir}: {list(available) or 'none'}).")
    return path


def external_inputs(cfg) -> list[Path]:
    """Part of the cache key: the warm-start version's files (a new version re-trains) and the user's code."""
    source = Path(cfg.train.init_from) if cfg.train.init_from else None
    warm = sorted(p for p in source.rglob("*") if p.is_file()) if source else []
    step = [user.source_file(cfg.train.step)] if cfg.train.step else []
    return warm + model_code_files(cfg.model.name) + [f for f in step if f]


def with_tuned(cfg, hyperparameters: Path):
    """The config with the tune stage's best values applied (none when tuning is off)."""
    best = json.loads((hyperparameters / "best.json").read_text())
    if best:
        print(f"train: tuned hyperparameters {best}")
    model = replace(cfg.model, **{k: v for k, v in best.items() if k != "learning_rate"})
    train = replace(cfg.train, learning_rate=best.get("learning_rate", cfg.train.learning_rate))
    return replace(cfg, model=model, train=train)


def run(cfg, inputs: dict[str, Path], out: Path) -> dict:
    from pipeline.training import fit

    return fit.train(with_tuned(cfg, inputs["hyperparameters"]), inputs, out)
