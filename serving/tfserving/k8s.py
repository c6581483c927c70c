"""The bundle's Kubernetes manifests (k8s/): a Deployment of the bundle's image, its Service, a
HorizontalPodAutoscaler and the ConfigMap that holds the three config files.

The ConfigMap is mounted over the image's /config (a whole directory, not subPath files, so the kubelet
updates it in place): a label moved there is applied by the running pods, which re-read models.config.
Batching and monitoring settings are read at start: `kubectl rollout restart` applies them. Rollouts
never drop capacity (maxUnavailable 0), and a pod takes traffic only while a version of its first model is
AVAILABLE: readiness asks for the model's metadata, which TF Serving answers only from a loaded version
(get_model_metadata_impl.cc: GetServableHandle). Status answers 200 whenever it knows the model, even when its
only version failed to load (state END), so a pod probed there would stay ready with nothing to serve.
"""
from __future__ import annotations

from serving.tfserving import container, yamlfile

REQUESTS = {"cpu": "2", "memory": "4Gi"}  # a starting point: measure and edit
MEMORY_LIMIT = "8Gi"
MAX_REPLICAS = 4
TARGET_CPU_PERCENT = 70


def manifests(name: str, image: str, first_model: str, gpus: int, config_files: dict[str, str]) -> dict[str, str]:
    """File name -> YAML text."""
    documents = {
        "deployment.yaml": deployment(name, image, first_model, gpus),
        "service.yaml": service(name),
        "hpa.yaml": autoscaler(name),
        "configmap.yaml": config_map(name, config_files),
    }
    return {file: yamlfile.dump(document) for file, document in documents.items()}


def deployment(name: str, image: str, first_model: str, gpus: int) -> dict:
    status = {"httpGet": {"path": f"/v1/models/{first_model}", "port": "http"}}  # the server answers
    available = {"httpGet": {"path": f"/v1/models/{first_model}/metadata", "port": "http"}}  # and has a version
    limits = {"memory": MEMORY_LIMIT, **({"nvidia.com/gpu": gpus} if gpus else {})}
    server = {
        "name": "tensorflow-serving",
        "image": image,
        "args": container.server_flags(),
        "ports": [{"name": "grpc", "containerPort": container.GRPC_PORT},
                  {"name": "http", "containerPort": container.REST_PORT}],
        "resources": {"requests": dict(REQUESTS), "limits": limits},
        # Loading a large model can take minutes: liveness waits for the first version to be AVAILABLE (10 min at
        # most, then the pod is restarted); a server that answers is alive, one without a version is not ready.
        "startupProbe": {**available, "periodSeconds": 10, "failureThreshold": 60},
        "readinessProbe": {**available, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**status, "periodSeconds": 15, "failureThreshold": 4},
        "volumeMounts": [{"name": "config", "mountPath": container.CONFIG_DIR, "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(name), "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(container.REST_PORT),
                    "prometheus.io/path": container.METRICS_PATH}},
                "spec": {"containers": [server],
                         "volumes": [{"name": "config", "configMap": {"name": config_map_name(name)}}]},
            },
        },
    }


def service(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {"selector": labels(name), "ports": [
            {"name": "grpc", "port": container.GRPC_PORT, "targetPort": "grpc", "appProtocol": "grpc"},
            {"name": "http", "port": container.REST_PORT, "targetPort": "http"},
        ]},
    }


def autoscaler(name: str) -> dict:
    """CPU utilisation is the metric every cluster has; with GPUs, a request-latency metric through a
    metrics adapter scales better (the README says so)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels(name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": TARGET_CPU_PERCENT}}}],
        },
    }


def config_map(name: str, files: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": config_map_name(name), "labels": labels(name)}, "data": dict(files)}


def config_map_name(name: str) -> str:
    return f"{name}-config"


def labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name}
