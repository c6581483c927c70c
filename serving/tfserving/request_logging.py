"""The bundle's request logging (logging/): TF Serving's open-source build cannot log requests (it accepts
`logging_config` in models.config but has no log collector, and refuses to start with one: "No
request-logger-creator provided"), so the bundle's TF Serving config has none. The same logs come from our server
(`python -m serving`, the maas image) run beside the TF Serving replicas with the same models and a models.config
that logs every model to the request-log volume:

- canary (the default): its pods carry the Service's label, so they take their share of the traffic (1 in N+1
  pods) and log what they answer;
- mirror: its pods stay out of the Service; a service mesh copies every request to the `<name>-logging` Service and
  discards the copy's answer (TF Serving answers the client), so every request is logged.

logging/ holds its models.config, a Dockerfile FROM the maas image, and k8s/: a Deployment (one replica: its volume
is ReadWriteOnce), the PersistentVolumeClaim the logs go to, a Service and a ConfigMap. The server keeps the logs
under --request_log_max_disk_bytes, set below the claim.
"""
from __future__ import annotations

import json

from google.protobuf import text_format

from serving.model_config import ModelServerConfig
from serving.tfserving import container, k8s, yamlfile

MODES = ("canary", "mirror")
MAAS_IMAGE = "maas-pipeline:latest"  # the maas repository's Dockerfile: this project, `python -m serving` included
STORAGE_GIB = 10  # the claim; the server keeps its logs within 90 % of it
COMPONENT = "request-logging"


def models_config(config: ModelServerConfig, sampling_rate: float) -> str:
    """The bundle's models.config with a logging_config per model: files <LOGS_DIR>/<model>-*.tfrecord."""
    logged = ModelServerConfig()
    logged.CopyFrom(config)
    for model in logged.model_config_list.config:
        model.logging_config.log_collector_config.type = "tfrecord"
        model.logging_config.log_collector_config.filename_prefix = f"{container.LOGS_DIR}/{model.name}"
        model.logging_config.sampling_config.sampling_rate = sampling_rate
    return ("# The bundle's models.config, each model logged by maas's server (TF Serving's own build cannot).\n"
            "# Move a label in both files.\n" + text_format.MessageToString(logged))


def server_flags() -> list[str]:
    """The TF Serving replicas' flags, and the bound on the logs."""
    return [*container.server_flags(), f"--request_log_max_disk_bytes={STORAGE_GIB * 2**30 * 9 // 10}"]


def image(name: str, tag: str) -> str:
    return f"{name}-logging:{tag}"


def dockerfile() -> str:
    command = ", \\\n     ".join(json.dumps(part) for part in ["python", "-m", "serving", *server_flags()])
    return f"""\
# Request logging: maas's server with the bundle's models and a models.config that logs every request (TF Serving's
# open-source build cannot). Build the maas image first, at the maas repository root: docker build -t {MAAS_IMAGE} .
# Then, in the bundle: docker build -f logging/Dockerfile -t <name>-logging:<tag> .
FROM {MAAS_IMAGE}
COPY models/ {container.MODELS_DIR}/
COPY logging/{container.MODELS_CONFIG} {container.BATCHING} {container.MONITORING} {container.CONFIG_DIR}/
EXPOSE {container.GRPC_PORT} {container.REST_PORT}
CMD [{command}]
"""


def selector(name: str) -> dict:
    return {"app.kubernetes.io/part-of": name, "app.kubernetes.io/component": COMPONENT}


def manifests(name: str, tag: str, first_model: str, mode: str, config_files: dict[str, str]) -> dict[str, str]:
    """File name -> YAML text, for logging/k8s/."""
    documents = {
        "deployment.yaml": deployment(name, tag, first_model, mode),
        "pvc.yaml": claim(name),
        "service.yaml": service(name),
        "configmap.yaml": {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": config_map_name(name), "labels": selector(name)},
                           "data": dict(config_files)},
    }
    return {file: yamlfile.dump(document) for file, document in documents.items()}


def deployment(name: str, tag: str, first_model: str, mode: str) -> dict:
    """The TF Serving Deployment's pod, run by maas's server on CPU with the logs' volume; in canary mode its pods
    carry the Service's label."""
    pod_labels = {**selector(name), **(k8s.labels(name) if mode == "canary" else {})}
    replica = k8s.deployment(name, image(name, tag), first_model, 0)
    server = replica["spec"]["template"]["spec"]["containers"][0]
    server.update(name="maas-serving", command=["python", "-m", "serving"], args=server_flags())
    server["volumeMounts"].append({"name": "request-logs", "mountPath": container.LOGS_DIR})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-logging", "labels": pod_labels},
        "spec": {
            "replicas": 1,  # one pod writes the ReadWriteOnce claim
            "selector": {"matchLabels": selector(name)},
            "strategy": {"type": "Recreate"},  # the old pod lets go of the claim before the new one mounts it
            "template": {
                "metadata": {"labels": pod_labels,
                             "annotations": replica["spec"]["template"]["metadata"]["annotations"]},
                "spec": {
                    # the maas image runs as uid 1000; the volume is made writable for its group
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                    "containers": [server],
                    "volumes": [{"name": "config", "configMap": {"name": config_map_name(name)}},
                                {"name": "request-logs", "persistentVolumeClaim": {"claimName": claim_name(name)}}],
                },
            },
        },
    }


def claim(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name(name), "labels": selector(name)},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": f"{STORAGE_GIB}Gi"}}}}


def service(name: str) -> dict:
    """The logging pods alone: a mirror's target, and where their metrics (records dropped, feature counts) are."""
    document = k8s.service(name)
    document["metadata"] = {"name": f"{name}-logging", "labels": selector(name)}
    document["spec"]["selector"] = selector(name)
    return document


def config_map_name(name: str) -> str:
    return f"{name}-logging-config"


def claim_name(name: str) -> str:
    return f"{name}-request-logs"
