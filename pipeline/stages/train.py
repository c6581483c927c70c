"""Train the configured model under the configured tf.distribute strategy.

`multi_worker` starts `train.workers` local processes, or, when TF_CONFIG is already set (a
cluster, see pipeline.k8s), runs as the one task it names; `parameter_server` starts a
coordinator (the chief) and `train.workers` + `train.ps` servers (pipeline.training.trainer). Every
strategy backs up each epoch (BackupAndRestore), so re-running a stage that was killed resumes
after its last finished epoch. `train.init_from` continues from a published version instead of
starting from scratch (online updates).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import repository
from models import model_code_files, user
from pipeline import specs
from pipeline.artifacts import Inputs, read_best_hyperparameters, read_schema
from pipeline.errors import StageError
from pipeline.registry import Registry, RegistryError
from pipeline.training.batch import with_batch_for
from pipeline.views import TrainView

SPEC = specs.TRAIN


def resolve(cfg: TrainView) -> TrainView:
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
            with Registry(model_dir.parent, read_only=True) as registry:  # planning (--list) writes nothing
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


def external_inputs(cfg: TrainView) -> list[Path]:
    """Part of the cache key: the warm-start version's files (a new version re-trains) and the user's code."""
    source = Path(cfg.train.init_from) if cfg.train.init_from else None
    warm = sorted(p for p in source.rglob("*") if p.is_file()) if source else []
    step = [user.source_file(cfg.train.step)] if cfg.train.step else []
    return warm + model_code_files(cfg.model.name) + [f for f in step if f]


def with_tuned(cfg: TrainView, hyperparameters: Path) -> TrainView:
    """The config with the tune stage's best values applied (none when tuning is off)."""
    best = read_best_hyperparameters(hyperparameters)
    if best:
        print(f"train: tuned hyperparameters {best}")
    model = replace(cfg.model, **{k: v for k, v in best.items() if k != "learning_rate"})
    train = replace(cfg.train, learning_rate=best.get("learning_rate", cfg.train.learning_rate))
    return replace(cfg, model=model, train=train)


def run(cfg: TrainView, inputs: Inputs, out: Path) -> dict:
    from pipeline.training import trainer

    cfg = with_batch_for(with_tuned(cfg, inputs["hyperparameters"]), read_schema(inputs["schema"])["rows"]["train"],
                         "train")
    return trainer.train(cfg, inputs.artefacts, out)
