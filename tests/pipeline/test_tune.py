"""The tune stage: keras-tuner over the declared space, best values into train's input."""
import json
from dataclasses import replace

import pytest

from pipeline.artifacts import Inputs, RunInfo
from pipeline.config import ConfigError, load_config
from pipeline.progress import SilentReporter
from pipeline.runner import Runner, stage_view
from pipeline.specs import TuneConfig
from pipeline.stages import train, tune


pytestmark = pytest.mark.xdist_group("test_tune")  # its module-scoped fixture runs once, on one worker


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    cfg = load_config(None, [f"output_dir={root / 'runs'}"])
    Runner(cfg).run("validate", reporter=SilentReporter())
    run = root / "runs" / "latest"
    return cfg, Inputs({"dataset": run / "validate" / "dataset", "schema": run / "validate" / "schema"}, RunInfo("test", {}))


@pytest.mark.slow
def test_random_search_picks_the_clearly_better_learning_rate(data, tmp_path):
    cfg, inputs = data
    view = stage_view(replace(cfg, tune=TuneConfig(algorithm="random", max_trials=2, epochs=2,
                                                  learning_rate=(1e-6, 3e-3))), tune)
    metrics = tune.run(view, inputs, tmp_path)
    best = json.loads((tmp_path / "hyperparameters" / "best.json").read_text())
    assert best == {"learning_rate": 3e-3}
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert len(trials) == 2 and trials[0]["score"] > trials[1]["score"] + 0.3
    assert metrics["trials"] == 2 and metrics["best"] == best


def test_without_a_search_train_sees_no_overrides(data, tmp_path):
    cfg, inputs = data
    assert tune.run(stage_view(replace(cfg, tune=TuneConfig()), tune), inputs, tmp_path) == {"trials": 0}
    view = stage_view(cfg, train)
    assert train.with_tuned(view, tmp_path / "hyperparameters") == view


def test_tuned_values_override_the_model_and_train_config(tmp_path):
    (tmp_path / "best.json").write_text('{"learning_rate": 0.01, "width": 8}')
    cfg = load_config()
    tuned = train.with_tuned(stage_view(cfg, train), tmp_path)
    assert tuned.train.learning_rate == 0.01 and tuned.model.width == 8 and tuned.model.depth == cfg.model.depth


def test_a_search_without_choices_is_a_config_error():
    with pytest.raises(ConfigError, match="tune.algorithm: a search needs choices"):
        load_config(None, ["tune.algorithm=random", "tune.learning_rate=[]", "tune.width=[]"])
    with pytest.raises(ConfigError, match="tune.algorithm: expected one of 'none', 'random', 'hyperband', 'bayesian'"):
        load_config(None, ["tune.algorithm=grid"])
