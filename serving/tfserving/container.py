"""How tensorflow_model_server runs in the bundle's image: its ports, where the bundle's files lie in the
container, and its flags. The Dockerfiles, docker-compose, the Kubernetes manifests and the bundle's README
all take them from here, so they cannot disagree."""
from __future__ import annotations

import importlib.metadata

GRPC_PORT = 8500
REST_PORT = 8501
MODELS_DIR = "/models"  # the bundle's models/<name>/<version>/; models.config's base paths point here
CONFIG_DIR = "/config"  # the three config files; on Kubernetes the ConfigMap is mounted over it
LOGS_DIR = "/logs"  # the request logs of the logging pods (request_logging.py); on Kubernetes a volume
MODELS_CONFIG = "models.config"
BATCHING = "batching_parameters.txt"
MONITORING = "monitoring.config"
CONFIG_FILES = (MODELS_CONFIG, BATCHING, MONITORING)
METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's conventional path
SERVER = "/usr/bin/tensorflow_model_server"  # where the tensorflow/serving images install it
# How often the server re-reads models.config: a label moved in the ConfigMap applies without a restart,
# within this plus the kubelet's ConfigMap sync (about a minute).
CONFIG_POLL_S = 30
# How often it looks for new version directories: versions come with the image, so rarely.
FILE_SYSTEM_POLL_S = 30


def server_flags() -> list[str]:
    """tensorflow_model_server's command line in the bundle (`python -m serving` accepts it too)."""
    return [
        f"--port={GRPC_PORT}",
        f"--rest_api_port={REST_PORT}",
        f"--model_config_file={CONFIG_DIR}/{MODELS_CONFIG}",
        f"--model_config_file_poll_wait_seconds={CONFIG_POLL_S}",
        # Without it TF Serving refuses a config whose labels name versions not loaded yet at startup.
        "--allow_version_labels_for_unavailable_models=true",
        f"--file_system_poll_wait_seconds={FILE_SYSTEM_POLL_S}",
        "--enable_batching=true",
        f"--batching_parameters_file={CONFIG_DIR}/{BATCHING}",
        f"--monitoring_config_file={CONFIG_DIR}/{MONITORING}",
    ]


def tf_serving_version() -> str:
    """The TF Serving release this project speaks (the installed tensorflow-serving-api): the image tag to pin."""
    return importlib.metadata.version("tensorflow-serving-api")


def base_image(tag: str, gpu: bool) -> str:
    return f"tensorflow/serving:{tag}-gpu" if gpu else f"tensorflow/serving:{tag}"


def image(name: str, tag: str, gpu: bool) -> str:
    """The bundle's own image, as its README builds it."""
    return f"{name}:{tag}-gpu" if gpu else f"{name}:{tag}"
