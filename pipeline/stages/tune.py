"""Search hyperparameters with keras-tuner; the best values flow into train through its input.

The search space is declared in the config: each list is the choices for one hyperparameter; an
empty list leaves it as configured. With `tune.algorithm: none` (the default) nothing is searched
and train sees no overrides. Trials run inside the training strategy's scope.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from models import model_code_files
from pipeline import specs
from pipeline.artifacts import BEST_HYPERPARAMETERS, TRIALS, Inputs, data_spec, read_schema, read_split, write_json
from pipeline.specs import MODEL_KEYS
from pipeline.training.batch import with_batch_for
from pipeline.views import TuneView

SPEC = specs.TUNE


def external_inputs(cfg: TuneView) -> list[Path]:
    """A user builder's file: trials build the model with it."""
    return model_code_files(cfg.model.name)


def run(cfg: TuneView, inputs: Inputs, out: Path) -> dict:
    if cfg.tune.algorithm == "none":
        write_json(BEST_HYPERPARAMETERS, out, {})
        return {"trials": 0}
    from models import build_model
    from models.compile_settings import compile_settings
    from pipeline.training.distribute import in_process_strategy, make_dataset
    from pipeline.training.keras_tuner_compat import keras_tuner

    schema = read_schema(inputs["schema"])
    cfg = with_batch_for(cfg, schema["rows"]["train"], "tune")
    spec = data_spec(schema)
    train, val = (read_split(inputs["dataset"], split) for split in ("train", "val"))
    space = {k: list(getattr(cfg.tune, k)) for k in ("learning_rate", *MODEL_KEYS) if getattr(cfg.tune, k)}

    def build(hp):
        chosen = {k: hp.Choice(k, v) for k, v in space.items()}
        model = build_model(replace(cfg.model, **{k: chosen[k] for k in MODEL_KEYS if k in chosen}), spec)
        learning_rate = chosen.get("learning_rate", cfg.train.learning_rate)
        model.compile(**compile_settings(schema["task"], learning_rate))
        return model

    objective = "val_accuracy" if schema["task"] == "classification" else "val_loss"
    algorithms = {"random": keras_tuner.RandomSearch, "hyperband": keras_tuner.Hyperband,
                  "bayesian": keras_tuner.BayesianOptimization}
    budget = {"max_epochs": cfg.tune.epochs} if cfg.tune.algorithm == "hyperband" else {"max_trials": cfg.tune.max_trials}
    tuner = algorithms[cfg.tune.algorithm](build, objective=objective, seed=cfg.seed, directory=str(out / "tuner"),
                                           project_name="search",
                                           distribution_strategy=in_process_strategy(cfg.train.strategy), **budget)
    tuner.search(make_dataset(train.x, train.y, cfg.train.batch_size, shuffle_seed=cfg.seed),
                 validation_data=make_dataset(val.x, val.y, cfg.train.batch_size),
                 epochs=cfg.tune.epochs, verbose=0)
    trials = [{"hyperparameters": t.hyperparameters.values, "score": t.score}
              for t in tuner.oracle.get_best_trials(num_trials=len(tuner.oracle.trials))]
    best = trials[0]["hyperparameters"]
    write_json(BEST_HYPERPARAMETERS, out, best)
    write_json(TRIALS, out, trials)
    print(f"tune: {len(trials)} trials, best {objective} {trials[0]['score']:.4f} with {best}")
    return {"trials": len(trials), f"best_{objective}": trials[0]["score"], "best": best}
