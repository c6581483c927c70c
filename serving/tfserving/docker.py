"""The bundle's Dockerfiles (GPU and CPU, FROM the tensorflow/serving release this project speaks) and its
docker-compose.yml.

The images' own entrypoint always passes --model_name/--model_base_path; the bundle replaces it with
tensorflow_model_server itself and passes the flags as CMD, so `docker run IMAGE --flag=...` and a
Kubernetes `args:` replace them whole, visibly.
"""
from __future__ import annotations

import json

from serving.tfserving import container, yamlfile


def dockerfile(tag: str, gpu: bool) -> str:
    flags = ", \\\n     ".join(json.dumps(flag) for flag in container.server_flags())
    kind = "GPU" if gpu else "CPU"
    return f"""\
# TF Serving {tag} ({kind}) with the bundle's models and config files (`python -m serving.tfserving build`).
FROM {container.base_image(tag, gpu)}
COPY models/ {container.MODELS_DIR}/
COPY {" ".join(container.CONFIG_FILES)} {container.CONFIG_DIR}/
EXPOSE {container.GRPC_PORT} {container.REST_PORT}
ENTRYPOINT ["{container.SERVER}"]
CMD [{flags}]
"""


def compose(name: str, tag: str) -> str:
    """Two services on the same ports, one per profile: `docker compose --profile gpu up --build` (or cpu)."""
    ports = [f"{port}:{port}" for port in (container.GRPC_PORT, container.REST_PORT)]
    gpu_devices = {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}
    services = {
        f"{name}-gpu": {"build": {"context": ".", "dockerfile": "Dockerfile.gpu"},
                        "image": container.image(name, tag, gpu=True), "profiles": ["gpu"], "ports": ports,
                        "deploy": {"resources": {"reservations": gpu_devices}}},
        f"{name}-cpu": {"build": {"context": ".", "dockerfile": "Dockerfile"},
                        "image": container.image(name, tag, gpu=False), "profiles": ["cpu"], "ports": ports},
    }
    return yamlfile.dump({"services": services}, ": docker compose --profile gpu up --build (or cpu)")
