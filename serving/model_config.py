"""Which models the server serves and which of their versions: the ModelServerConfig.

Built from `--model_name`/`--model_base_path` or read from a `--model_config_file` (text-format ModelServerConfig),
checked (a model's logging_config included: what serving.request_log can honour), and asked which versions a model's
version policy wants among those the model repository holds (what a version is, is the `repository` module's rule).
"""
from __future__ import annotations

from pathlib import Path

from tensorflow_serving.config import model_server_config_pb2

import repository
from serving import protos

ModelConfig = model_server_config_pb2.ModelConfig
ModelServerConfig = model_server_config_pb2.ModelServerConfig
LOG_COLLECTOR_TYPES = ("tfrecord",)  # logging_config.log_collector_config.type: what serving.request_log writes


def aspired_versions(available: list[int], config: ModelConfig) -> set[int]:
    """The versions the model's version policy wants loaded (TF Serving's default: latest 1)."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(available)
    if choice == "specific":
        return set(policy.specific.versions) & set(available)
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions else 1
    return set(sorted(available)[-count:])


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config `--model_name` / `--model_base_path` stand for."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    check_model_config(model, "--model_name/--model_base_path")
    return config


def load_model_server_config(path: str) -> ModelServerConfig:
    """Parse a --model_config_file (text-format ModelServerConfig) and check it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"--model_config_file {path!r}: cannot read it ({e.strerror}).") from None
    config = protos.parse_text(text, ModelServerConfig, f"--model_config_file {path!r}")
    check_server_config(config, f"--model_config_file {path!r}")
    return config


def check_server_config(config: ModelServerConfig, source: str) -> None:
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{source}: expected a model_config_list (custom_model_config is not supported).")
    names = [m.name for m in config.model_config_list.config]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: model names must be unique; {duplicates} appear more than once.")
    for model in config.model_config_list.config:
        check_model_config(model, source)


def check_model_config(model: ModelConfig, source: str) -> None:
    problem = repository.name_problem(model.name)
    if problem:
        raise ValueError(f"{source}: model name: {problem}")
    if not model.base_path:
        raise ValueError(f"{source}: model {model.name!r} has no base_path.")
    if model.model_platform not in ("", "tensorflow"):
        raise ValueError(f"{source}: model {model.name!r} has model_platform {model.model_platform!r}; "
                         f"only 'tensorflow' is served.")
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions < 0:
        raise ValueError(f"{source}: model {model.name!r}: latest.num_versions must be positive.")
    for label, version in model.version_labels.items():
        problem = repository.name_problem(label)
        if problem:
            raise ValueError(f"{source}: model {model.name!r}: label: {problem}")
        if version < 0:
            raise ValueError(f"{source}: model {model.name!r}: label {label!r} points at version {version}.")
    if model.HasField("logging_config"):
        problem = logging_config_problem(model.logging_config)
        if problem:
            raise ValueError(f"{source}: model {model.name!r}: logging_config.{problem}")


def logging_config_problem(config) -> str:
    """What is wrong with a model's LoggingConfig (the field first), or "" if this server can honour it."""
    collector, sampling = config.log_collector_config, config.sampling_config
    if collector.type not in LOG_COLLECTOR_TYPES:
        return (f"log_collector_config.type: {collector.type!r} is not a log collector this server has; expected "
                f"one of {list(LOG_COLLECTOR_TYPES)}. Collectors registered in C++ for TF Serving "
                f"(LogCollector::RegisterFactory) are not supported (TF Serving's open-source build has none).")
    if not collector.filename_prefix:
        return ("log_collector_config.filename_prefix is empty; expected where the files go, e.g. "
                "\"/var/log/maas/<model>\" (files <prefix>-<start time>-<pid>-<sequence>.tfrecord).")
    if not 0.0 <= sampling.sampling_rate <= 1.0:  # NaN too
        return (f"sampling_config.sampling_rate: expected a fraction of requests within [0, 1], received "
                f"{sampling.sampling_rate!r}.")
    unsupported = [name for name, present in (
        ("sampling_config.per_task_sampling_configs", bool(sampling.per_task_sampling_configs)),
        ("sampling_config.attributes", bool(sampling.attributes)),
        ("custom_logging_config", config.HasField("custom_logging_config"))) if present]
    if unsupported:
        return (f"{unsupported[0]} is not supported by this server (it has no datacenter, task index or request "
                f"attributes); remove it and use sampling_config.sampling_rate.")
    return ""
