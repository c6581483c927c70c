"""Build a bundle: every input is read and checked first, then the whole bundle is written into a hidden
directory beside --out and renamed into place, so a failed build leaves nothing behind and a bundle that
exists is complete."""
from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

from google.protobuf import text_format

from serving import protos
from serving.batching import BatchingParameters
from serving.tfserving import container, docker, k8s, request_logging, served
from serving.tfserving.errors import UsageError
from serving.tfserving.readme import readme

NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a Kubernetes object name (DNS label)
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,123}")  # a Docker tag, leaving room for "-gpu"
DEFAULT_BATCHING = """\
# Defaults for a GPU server, not measured: TF Serving's batching guide (tensorflow_serving/batching/README.md,
# "GPU: One Approach") advises max_batch_size in the hundreds, batch_timeout_micros of a few milliseconds,
# and num_batch_threads = the number of CPU cores, which is what TF Serving uses when it is unset.
# Measure instead: `python -m serving.tfserving sweep --model <repository>/<model>` on the serving hardware
# writes <repository>/batching_parameters.txt, and the next build takes it.
max_batch_size { value: 128 }
batch_timeout_micros { value: 2000 }
"""


def build(repository: Path, out: Path, image_tag: str, name: str, gpus: int, logging_mode: str = "canary",
          log_sampling_rate: float = 1.0) -> Path:
    """Write the bundle for `repository` to `out` (which must not exist); returns `out`."""
    if not NAME.fullmatch(name):
        raise UsageError(f"--name {name!r}: expected a Kubernetes name (lowercase letters, digits and '-', "
                         f"at most 63, starting and ending with a letter or digit), e.g. 'maas-serving'.")
    if not TAG.fullmatch(image_tag):
        raise UsageError(f"--image-tag {image_tag!r}: expected a tensorflow/serving release tag such as "
                         f"{container.tf_serving_version()!r} (letters, digits, '_', '.', '-').")
    if gpus < 0:
        raise UsageError(f"--gpus {gpus}: expected 0 (CPU) or a positive number of GPUs per pod.")
    if out.exists():
        raise UsageError(f"--out {out} already exists; remove it or choose another directory.")
    if not 0.0 <= log_sampling_rate <= 1.0:
        raise UsageError(f"--log-sampling-rate {log_sampling_rate:g}: expected the fraction of requests logged, "
                         f"within [0, 1].")
    what = served.read(repository)
    configs = {container.MODELS_CONFIG: what.text(), container.BATCHING: batching_text(repository),
               container.MONITORING: monitoring_text()}
    files = {"Dockerfile.gpu": docker.dockerfile(image_tag, gpu=True),
             "Dockerfile": docker.dockerfile(image_tag, gpu=False),
             "docker-compose.yml": docker.compose(name, image_tag),
             "README.md": readme(what, name, image_tag, gpus, logging_mode), **configs}
    first_model = what.config.model_config_list.config[0].name
    image = container.image(name, image_tag, gpu=gpus > 0)
    files.update({f"k8s/{file}": text for file, text in k8s.manifests(name, image, first_model, gpus, configs).items()})
    logged_models = request_logging.models_config(what.config, log_sampling_rate)
    logging_configs = {**configs, container.MODELS_CONFIG: logged_models}
    files.update({f"logging/{container.MODELS_CONFIG}": logging_configs[container.MODELS_CONFIG],
                  "logging/Dockerfile": request_logging.dockerfile()})
    files.update({f"logging/k8s/{file}": text for file, text in
                  request_logging.manifests(name, image_tag, first_model, logging_mode, logging_configs).items()})

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        for model, versions in what.versions.items():
            for version, source in versions.items():
                shutil.copytree(source, staging / "models" / model / str(version))
        for file, text in files.items():
            (staging / file).parent.mkdir(parents=True, exist_ok=True)
            (staging / file).write_text(text)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def batching_text(repository: Path) -> str:
    """The sweep's file beside the models (checked as our server checks it), else the GPU defaults."""
    path = repository / container.BATCHING
    if not path.is_file():
        return DEFAULT_BATCHING
    text = path.read_text()
    try:
        BatchingParameters.from_text(text, str(path))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return text


def monitoring_text() -> str:
    monitoring = protos.MonitoringConfig()
    monitoring.prometheus_config.enable = True
    monitoring.prometheus_config.path = container.METRICS_PATH
    return text_format.MessageToString(monitoring)
