"""Which models and versions a bundle serves, and its models.config.

The repository's own `models.config` is the source of truth when there is one (the model registry writes
it: absolute base paths, specific versions, labels). Otherwise every model directory in the repository
that holds versions is served at its latest version. Either way every version the config names must be
there and hold a SavedModel, every label must name a version the config serves, and the bundle's copy of
the config points each base path at /models/<name>, where the bundle puts that model's versions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

import repository
from serving import protos
from serving.model_config import ModelConfig, ModelServerConfig, aspired_versions, check_server_config
from serving.tfserving import container
from serving.tfserving.errors import UsageError


@dataclass(frozen=True)
class Served:
    config: ModelServerConfig  # base paths are the container's /models/<name>
    versions: dict[str, dict[int, Path]]  # model name -> version -> the directory to copy
    source: str  # where the config came from, in words

    def text(self) -> str:
        """The bundle's models.config."""
        return f"# {self.source}\n{text_format.MessageToString(self.config)}"


def read(repo: Path) -> Served:
    """What the bundle built from this repository serves; UsageError if anything is missing or malformed."""
    if not repo.is_dir():
        raise UsageError(f"--repository {repo}: no such directory; expected a model repository "
                         f"(<repository>/<model name>/<version>/saved_model.pb).")
    path = repo / container.MODELS_CONFIG
    if path.is_file():
        config, origin = load(path), path
        source = f"From {path}, base paths rewritten to {container.MODELS_DIR}/<name>."
    else:
        config, origin = generate(repo), repo
        source = f"Generated from {repo}: every model at its latest version."
    # A relative base path is taken relative to the repository (an absolute one stays as it is).
    versions = {model.name: served_versions(model, repo / model.base_path, f"{origin}: model {model.name!r}")
                for model in config.model_config_list.config}
    for model in config.model_config_list.config:
        model.base_path = f"{container.MODELS_DIR}/{model.name}"
        model.model_platform = "tensorflow"
        if model.HasField("logging_config"):  # TF Serving's open-source build refuses to start with one (the
            model.ClearField("logging_config")  # bundle's logging/ serves the models with request logging)
            source += f" Model {model.name!r}'s logging_config removed: tensorflow_model_server cannot log."
    return Served(config, versions, source)


def load(path: Path) -> ModelServerConfig:
    try:
        config = protos.parse_text(path.read_text(), ModelServerConfig, str(path))
        check_server_config(config, str(path))
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None
    if not config.model_config_list.config:
        raise UsageError(f"{path}: no models found: its model_config_list is empty. Add a `config {{ name: ... "
                         f"base_path: ... }}` per model, or remove the file to serve every model in the repository.")
    return config


def generate(repo: Path) -> ModelServerConfig:
    """Every model directory that holds versions, with the latest-version policy."""
    config = ModelServerConfig()
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not repository.versions(model_dir):
            continue
        problem = repository.name_problem(model_dir.name)
        if problem:
            raise UsageError(f"{model_dir}: not a usable model name: {problem} Rename the directory.")
        model = config.model_config_list.config.add(name=model_dir.name, base_path=str(model_dir.resolve()),
                                                    model_platform="tensorflow")
        model.model_version_policy.latest.num_versions = 1
    if not config.model_config_list.config:
        raise UsageError(f"--repository {repo}: no models found; expected TF Serving's layout "
                         f"<repository>/<model name>/<version number>/saved_model.pb (e.g. the pipeline's "
                         f"push.repository), or a models.config in it.")
    return config


def served_versions(model: ModelConfig, base: Path, where: str) -> dict[int, Path]:
    """The versions the model's policy serves among those under its base path, checked."""
    available = repository.versions(base)
    wanted = list(model.model_version_policy.specific.versions)
    missing = [v for v in wanted if v not in available]
    if missing:
        raise UsageError(f"{where} serves version(s) {missing}, but {base} holds no such version with a "
                         f"saved_model.pb (it has {sorted(available) or 'none'}). Publish them or remove them "
                         f"from model_version_policy.")
    served = aspired_versions(list(available), model)
    if not served:
        raise UsageError(f"{where}: base path {base} holds no versions (<version number>/saved_model.pb).")
    for label, version in model.version_labels.items():
        if version not in served:
            raise UsageError(f"{where}: label {label!r} points at version {version}, which the config does not "
                             f"serve (it serves {sorted(served)}). Point the label at a served version.")
    return {v: available[v] for v in sorted(served)}
