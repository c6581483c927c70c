"""What each stage is, apart from what it does: its config section and its declaration of what it reads
and writes (TFX's component specs, in one leaf module).

The config sections' dataclasses, `PipelineConfig` that holds them, and one `StageSpec` per stage: the config
fields it reads (its cache key), those it reads without their changing its output, and the artefacts it takes
and makes. This module imports nothing of the pipeline, so the config loader, the stages, the runner and a
launched training worker all import it and none of them each other. Every comment on a field's line is the
README's configuration reference (`python -m pipeline.reference`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import repository
from models.config import ModelConfig
from models.user import reference_problem

# Config vocabulary: names a config may use, checked when it loads.
TABLES = (".csv", ".parquet")  # data.source files read as tables
AUGMENTATIONS = ("flip", "crop")  # data.augment
Strategy = Literal["default", "mirrored", "multi_worker", "parameter_server"]  # train.strategy
PARTITION_KEYS = {"fixed": "partition_shards", "min_size": "partition_min_shard_bytes",
                  "max_size": "partition_max_shard_bytes"}  # train.partition -> the key that sizes its shards
MODEL_KEYS = ("width", "depth", "dropout")  # model.* fields tune may search
VARIANTS = ("pruned", "qat", "pqat", "cluster", "distilled")  # compress.variants
QUANTIZED = ("qat", "pqat")  # already quantization-aware: converted to int8 only
PTQ = ("float", "dynamic", "float16", "int8")  # compress.tflite: post-training quantization kinds


@dataclass(frozen=True)
class DataConfig:
    source: str = "digits"  # "digits" (bundled with scikit-learn), a .csv / .parquet / .npz file, or a directory
    # of images with one sub-folder per class (pipeline.images)
    task: Literal["auto", "classification", "regression"] = "auto"  # auto: decided from the labels, and said why
    label: str = "label"  # the CSV label column
    features: tuple[str, ...] = ()  # CSV feature columns; empty = every column but the label and the logged_* ones
    # (what `python -m pipeline.monitor export` adds: the served prediction, version and time)
    categorical: tuple[str, ...] = ()  # CSV columns of categories (strings): the model looks them up in vocabularies
    # adapted on the train split, and clients send the strings as inputs named after the columns
    input_shape: tuple[int, ...] = ()  # each row reshaped to this for the model; empty = as stored
    classes: tuple[str, ...] = ()  # classification: the labels expected; a row labelled otherwise is rejected with
    # the reason (empty = the labels found)
    text_column: str = ""  # CSV: a column of free text, the model's one input (a string; the model vectorizes it)
    max_tokens: int = 10000  # text: vocabulary size, adapted on the train split (TextVectorization)
    sequence_length: int = 32  # text: tokens per example the model reads (padded or cut)
    image_size: tuple[int, ...] = (32, 32)  # images: [height, width] every image is resized to
    channels: int = 3  # images: 1 (grey) or 3 (RGB); an image holding another count is rejected with the reason
    augment: tuple[str, ...] = ()  # images, at training only: flip (left-right), crop (random, after 4-pixel padding)
    val_fraction: float = 0.15  # rows held out to stop early and to choose a compressed variant
    test_fraction: float = 0.15  # rows held out for the final figures (evaluate)

    def problems(self) -> list[str]:
        found = []
        if self.source != "digits":
            path = Path(self.source)
            if path.is_dir():
                pass
            elif path.suffix not in TABLES + (".npz",):
                found.append(f"source: expected 'digits', a .csv, .parquet or .npz file or a directory of class "
                             f"folders, received {self.source!r}.")
            elif not path.is_file():
                found.append(f"source: no such file {str(path.resolve())!r}.")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                found.append(f"{name}: expected a number in (0, 0.5), received {getattr(self, name)}.")
        if any(d < 1 for d in self.input_shape):
            found.append(f"input_shape: expected positive sizes, received {list(self.input_shape)}.")
        if len(self.image_size) != 2 or any(d < 1 for d in self.image_size):
            found.append(f"image_size: expected [height, width], positive, received {list(self.image_size)}.")
        if self.channels not in (1, 3):
            found.append(f"channels: expected 1 (grey) or 3 (RGB), received {self.channels}.")
        unknown = sorted(set(self.augment) - set(AUGMENTATIONS))
        if unknown:
            found.append(f"augment: expected any of {list(AUGMENTATIONS)}, received {unknown}.")
        bad = [c for c in self.categorical if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c) or c == "x"]
        if bad:
            found.append(f"categorical: {bad} cannot name serving inputs (each categorical column is one); expected "
                         f"letters, digits and _ starting with a letter, and not 'x' (the numeric features). "
                         f"Rename the column(s) in the file.")
        if self.categorical and self.input_shape:
            found.append(f"input_shape: {list(self.input_shape)} reshapes rows for a cnn or rnn; rows with categorical "
                         f"columns are flat: set data.input_shape=[] and model.name=mlp or recommender (or a builder of yours).")
        for name in ("max_tokens", "sequence_length"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        return found


@dataclass(frozen=True)
class ValidateConfig:
    max_reject_fraction: float = 0.05  # fail when more rows than this are rejected

    def problems(self) -> list[str]:
        if not 0 <= self.max_reject_fraction <= 1:
            return [f"max_reject_fraction: expected a number in [0, 1], received {self.max_reject_fraction}."]
        return []


@dataclass(frozen=True)
class TuneConfig:
    algorithm: Literal["none", "random", "hyperband", "bayesian"] = "none"  # none: train as configured
    max_trials: int = 6  # random, bayesian
    epochs: int = 5  # per trial (hyperband: the most any trial gets)
    learning_rate: tuple[float, ...] = ()  # choices; empty = train.learning_rate
    width: tuple[int, ...] = ()  # choices for model.width
    depth: tuple[int, ...] = ()  # choices for model.depth
    dropout: tuple[float, ...] = ()  # choices for model.dropout

    def problems(self) -> list[str]:
        found = [f"{name}: expected a positive integer, received {getattr(self, name)}."
                 for name in ("max_trials", "epochs") if getattr(self, name) < 1]
        if self.algorithm != "none" and not any(getattr(self, k) for k in ("learning_rate", *MODEL_KEYS)):
            found.append("algorithm: a search needs choices, e.g. tune.learning_rate=[0.001, 0.01]; "
                         "all of learning_rate, width, depth, dropout are empty.")
        return found


@dataclass(frozen=True)
class TrainConfig:
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
            problem = reference_problem(self.step)
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


@dataclass(frozen=True)
class EvaluateConfig:
    min_accuracy: float = 0.9  # classification gate: the run fails before export below this
    max_mae: float | None = None  # regression gate; null = no gate
    beat_mean: bool = True  # regression gate: fail unless the model beats predicting the train split's mean

    def problems(self) -> list[str]:
        if not 0 <= self.min_accuracy <= 1:
            return [f"min_accuracy: expected a number in [0, 1], received {self.min_accuracy}."]
        return []


@dataclass(frozen=True)
class CompressConfig:
    variants: tuple[str, ...] = ()  # any of pruned, qat, pqat, cluster, distilled; empty = export as trained
    tflite: tuple[str, ...] = ("float", "dynamic", "float16", "int8")  # post-training quantization kinds
    target_sparsity: float = 0.8  # pruned and pqat: of every Dense and Conv2D kernel but the first and the last
    fine_tune_epochs: int = 4  # pruned, qat, pqat, cluster: training with the compression wrappers in place
    clusters: int = 16  # cluster: distinct weight values per layer
    student_width: int = 12  # distilled: model.width of the student
    distill_epochs: int = 150  # distilled: at most this many epochs; the student is trained from scratch, on the
    # teacher's soft labels, and stops early (distill_patience)
    distill_patience: int = 20  # distilled: epochs without a better agreement with the teacher on the validation
    # rows' inputs (their labels are left for the gate) before it stops; the best epoch is kept
    distill_tries: int = 3  # distilled: students trained from other initialisations while the best one disagrees
    # with the teacher on more than max_accuracy_drop of the validation rows' inputs; the one that agrees best is kept
    distill_temperature: float = 3.0  # distilled: softens the teacher's probabilities
    distill_alpha: float = 0.5  # weight of the hard labels; the rest is the teacher's soft labels (on digits' 1,250
    # rows, 0.1 at temperature 4 left students 0.7 to 1.9 points below their teacher on the test split, 0.5 at 3
    # 0 to 1.1)
    max_accuracy_drop: float = 0.01  # gate: accuracy a variant may lose against the trained model (0.01: a point),
    # measured paired, on the same validation rows
    select: str = "smallest_within"  # smallest_within (SavedModel gzip size), baseline, or a variant compress runs
    representative_rows: int = 200  # int8 calibration rows from the train split

    def problems(self) -> list[str]:
        found = [f"variants: unknown variant {v!r}; expected any of {', '.join(VARIANTS)}."
                 for v in self.variants if v not in VARIANTS]
        found += [f"tflite: unknown kind {k!r}; expected any of {', '.join(PTQ)}."
                  for k in self.tflite if k not in PTQ]
        if not 0 < self.target_sparsity < 1:
            found.append(f"target_sparsity: expected a number in (0, 1), received {self.target_sparsity}.")
        if self.select not in ("smallest_within", "baseline", *self.variants):
            found.append(f"select: expected smallest_within, baseline or one of the variants compress runs "
                         f"(compress.variants={list(self.variants)}), received {self.select!r}.")
        if not 0 <= self.max_accuracy_drop <= 1:
            found.append(f"max_accuracy_drop: expected a number in [0, 1] (0.01 is a point of accuracy), received "
                         f"{self.max_accuracy_drop}.")
        for name in ("fine_tune_epochs", "clusters", "student_width", "distill_epochs", "distill_patience",
                     "distill_tries", "representative_rows"):
            if getattr(self, name) < 1:
                found.append(f"{name}: expected a positive integer, received {getattr(self, name)}.")
        return found


EXPLAIN_STEPS = (2, 1024)  # export.explain_steps: the fewest and the most


@dataclass(frozen=True)
class ExportConfig:
    warmup: bool = True  # write assets.extra/tf_serving_warmup_requests (TF Serving replays it on load)
    reject_nonfinite: bool = True  # a request with NaN or Infinity in `x` fails (400) instead of being answered
    explain: bool = True  # add the `explain` signature: each input value's share of the prediction (integrated
    # gradients, computed in the graph, so TF Serving answers it too); a model with an input it cannot attribute to is
    # exported without it, and export says why
    explain_steps: int = 32  # explain: intervals of the path from the baseline to the input (each row runs the model
    # at steps + 2 points, in one batch)

    def problems(self) -> list[str]:
        low, high = EXPLAIN_STEPS
        if not low <= self.explain_steps <= high:
            return [f"explain_steps: expected an integer in [{low}, {high}] (32 is the default; fewer steps share the "
                    f"score out less exactly, more cost time per request), received {self.explain_steps}."]
        return []


@dataclass(frozen=True)
class InfraValidateConfig:
    enabled: bool = True  # false: push without serving the candidate first
    rows: int = 64  # test rows sent over each protocol and compared with the in-process model
    requests: int = 100  # single-row REST requests timed for the latency figures
    max_p99_ms: float = 100.0  # gate: the run fails above this
    tolerance: float = 1e-5  # relative; served and in-process outputs must agree within it (and 1e-6 absolute)
    timeout_s: float = 120.0  # for the server to load the candidate

    def problems(self) -> list[str]:
        found = [f"{name}: expected a positive integer, received {getattr(self, name)}."
                 for name in ("rows", "requests") if getattr(self, name) < 1]
        found += [f"{name}: expected a positive number, received {getattr(self, name)}."
                  for name in ("max_p99_ms", "tolerance", "timeout_s") if getattr(self, name) <= 0]
        return found


@dataclass(frozen=True)
class PushConfig:
    repository: str = "model_repository"  # the model base path's parent, as in --model_base_path
    model_name: str = ""  # "" = named after data.source: "digits", or the data file's name without its suffix
    allow_signature_change: bool = False  # publish even if clients of the newest version would break
    smoke_test: bool = False  # before publishing, serve the candidate and send it one predict request
    smoke_test_timeout_s: float = 120.0  # for the server to report the smoke-tested candidate AVAILABLE

    def problems(self) -> list[str]:
        problem = self.model_name and repository.name_problem(self.model_name)
        found = [f"model_name: {problem}"] if problem else []
        if self.smoke_test_timeout_s <= 0:
            found.append(f"smoke_test_timeout_s: expected a positive number, received {self.smoke_test_timeout_s}.")
        return found


@dataclass(frozen=True)
class MonitorConfig:
    """`python -m pipeline.monitor drift`: when a feature of served requests has drifted from training (TFDV's
    measures: Jensen–Shannon divergence for numbers, L-infinity distance for categories and text tokens)."""

    numeric_threshold: float = 0.1  # a number drifted above this Jensen–Shannon divergence (0..1); the digits test
    # split against its train split stays below 0.03, a pixel brightened by 6 of 16 reaches 0.27
    categorical_threshold: float = 0.1  # a category or text drifted when a value's share moved by more than this
    feature_thresholds: tuple[str, ...] = ()  # per feature, NAME=THRESHOLD, e.g. [pixel_20=0.2, city=0.05]
    min_rows: int = 100  # fewer logged rows than this: distances are mostly sampling noise, and drift says so

    def problems(self) -> list[str]:
        found = [f"{name}: expected a number in (0, 1], received {value}." for name, value in
                 (("numeric_threshold", self.numeric_threshold), ("categorical_threshold", self.categorical_threshold))
                 if not 0 < value <= 1]
        for item in self.feature_thresholds:
            name, _, value = item.rpartition("=")
            if not name or not _is_threshold(value):
                found.append(f"feature_thresholds: expected NAME=THRESHOLD with a threshold in (0, 1], e.g. "
                             f"pixel_20=0.2, received {item!r}.")
        if self.min_rows < 1:
            found.append(f"min_rows: expected a positive integer, received {self.min_rows}.")
        return found

    def threshold(self, feature: str, numeric: bool) -> float:
        """The threshold of `feature`: its own in feature_thresholds, else its kind's."""
        own = {name: float(value) for name, _, value in (item.rpartition("=") for item in self.feature_thresholds)}
        return own.get(feature, self.numeric_threshold if numeric else self.categorical_threshold)


def _is_threshold(text: str) -> bool:
    try:
        return 0 < float(text) <= 1
    except ValueError:
        return False


@dataclass(frozen=True)
class PipelineConfig:
    output_dir: str = "runs"  # where runs (and the stage cache, in .cache/) go
    seed: int = 42  # the split, weight initialisation and shuffling: the same seed, the same run
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    infra_validate: InfraValidateConfig = field(default_factory=InfraValidateConfig)
    push: PushConfig = field(default_factory=PushConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


@dataclass(frozen=True)
class StageSpec:
    """What a stage reads and writes. `name`: the stage's; `reads`: the config fields that decide its output, its cache key (a section
    name means all its fields); `runtime`: fields it reads that do not change its output; `inputs` / `outputs`:
    artefact names, each output a directory of that name in the stage's output dir."""

    name: str
    reads: tuple[str, ...]
    runtime: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


INGEST = StageSpec(
    "ingest",
    reads=("seed", "data.source", "data.task", "data.label", "data.features", "data.categorical", "data.input_shape",
           "data.text_column", "data.image_size", "data.channels", "data.val_fraction", "data.test_fraction"),
    outputs=("examples",))
VALIDATE = StageSpec(
    "validate",
    reads=("validate", "data.classes", "data.max_tokens", "data.sequence_length"),
    inputs=("examples",), outputs=("dataset", "schema"))
TUNE = StageSpec(
    "tune",
    reads=("seed", "tune", "model", "train.learning_rate", "train.batch_size", "train.strategy"),
    inputs=("dataset", "schema"), outputs=("hyperparameters",))
TRAIN = StageSpec(
    "train",
    reads=("seed", "model", "data.augment", "train.epochs", "train.batch_size", "train.strategy", "train.workers",
           "train.ps", "train.partition", "train.partition_shards", "train.partition_min_shard_bytes",
           "train.partition_max_shard_bytes", "train.backup_dir", "train.init_from", "train.loop", "train.step",
           "train.learning_rate", "train.early_stopping_patience"),
    # push.* only locate the version train.init_from names; the stage's `resolve` turns that into a path, keyed.
    runtime=("train.verbose", "push.repository", "push.model_name"),
    inputs=("dataset", "schema", "hyperparameters"), outputs=("model",))
EVALUATE = StageSpec(
    "evaluate",
    reads=("evaluate", "model.name"),
    inputs=("model", "dataset", "schema"), outputs=("evaluation",))
COMPRESS = StageSpec(
    "compress",
    reads=("seed", "compress", "model", "train.batch_size", "train.learning_rate", "train.strategy"),
    inputs=("model", "dataset", "schema"), outputs=("compressed",))
EXPORT = StageSpec(
    "export",
    reads=("export", "model.name"),
    inputs=("compressed", "schema", "dataset"), outputs=("saved_model", "saved_model_evaluation"))
INFRA_VALIDATE = StageSpec(
    "infra_validate",
    reads=("infra_validate.enabled", "infra_validate.rows", "infra_validate.requests", "infra_validate.max_p99_ms",
           "infra_validate.tolerance"),
    runtime=("infra_validate.timeout_s",),
    inputs=("saved_model", "dataset", "schema"), outputs=("infra_validation",))
PUSH = StageSpec(
    "push",
    reads=("push.repository", "push.model_name", "push.allow_signature_change", "push.smoke_test"),
    runtime=("push.smoke_test_timeout_s",),
    inputs=("saved_model", "saved_model_evaluation", "infra_validation", "evaluation", "compressed", "dataset"))
