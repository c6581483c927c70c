"""Kubernetes manifests that run the pipeline on a cluster, training distributed (printed by `python -m pipeline.k8s`).

`--kind job` (default): a headless Service and an Indexed Job of `train.workers` pods. Each pod
gets its TF_CONFIG from its completion index (the Service gives pod i the stable DNS name
<name>-i.<name>), so it trains as that worker of a multi_worker cluster.
`--kind tfjob`: a Kubeflow TFJob; the training operator sets TF_CONFIG itself, and it also runs
`train.strategy=parameter_server` (a Chief coordinator, Worker and PS servers).

Every training pod runs POD_SCRIPT: the pipeline `--until train` as its task; then the chief (task
index 0: worker 0, or the TFJob's Chief) runs the whole pipeline in a new process, where ingest ...
train are cache hits, so the stages after train run once and push into the model repository on the
runs volume. Each pod keeps its output dir on that volume, named after the pod, so a restarted pod
finds its cache and its BackupAndRestore epochs there and resumes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.errors import CommandLineError

PORT = 2222
MOUNT = "/runs"  # where every pod mounts the runs volume
UID = 1000  # the pipeline image's user (USER in Dockerfile and Dockerfile.gpu)
INDEX = "$(TASK_INDEX)"  # Kubernetes substitutes env vars written $(NAME) in env values and args
JOB_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
TFJOB_INDEX = "metadata.labels['training.kubeflow.org/replica-index']"  # set by the training operator

# Run as `sh -c POD_SCRIPT pipeline ARGS...`. The chief's second run is a new process without TF_CONFIG:
# a process that joined the cluster stays tied to it (pipeline.training.trainer), and it trains no more.
POD_SCRIPT = """\
set -e
# every pod trains, as the task its TF_CONFIG names
python -m pipeline.run --until train "$@"
# the chief then runs the stages after train (train is cached) and pushes the model
if [ "$TASK_INDEX" = 0 ]; then
  exec env -u TF_CONFIG python -m pipeline.run "$@"
fi
"""


@dataclass(frozen=True)
class Pods:
    """What the pods of one job share."""

    name: str  # the Job's or TFJob's name (and the Service's)
    image: str
    claim: str  # the PersistentVolumeClaim mounted at MOUNT
    gpus: int = 0  # nvidia.com/gpu limit of each pod that trains


def runs_claim(name: str, size: str, storage_class: str | None, access_mode: str) -> dict:
    """The volume holding every pod's runs and the model repository; pods on several nodes need ReadWriteMany."""
    spec = {"accessModes": [access_mode], "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name}, "spec": spec}


def cluster_addresses(name: str, workers: int) -> list[str]:
    """Stable DNS names of the Indexed Job's pods: hostname <name>-i in the Service's subdomain."""
    return [f"{name}-{i}.{name}:{PORT}" for i in range(workers)]


def indexed_job(cfg: PipelineConfig, pod_args: list[str], pods: Pods) -> list[dict]:
    """A headless Service and an Indexed Job whose pod i trains as worker i; pod 0 then pushes."""
    if cfg.train.strategy != "multi_worker":
        raise CommandLineError(
            f"--kind job runs identical pods, so it needs train.strategy=multi_worker; received "
            f"{cfg.train.strategy!r}. Use --kind tfjob for 'parameter_server'.")
    cluster = json.dumps({"worker": cluster_addresses(pods.name, cfg.train.workers)})
    env = [
        _field_env("TASK_INDEX", JOB_INDEX),
        {"name": "TF_CONFIG",  # after TASK_INDEX: only earlier vars are substituted
         "value": f'{{"cluster": {cluster}, "task": {{"type": "worker", "index": {INDEX}}}}}'},
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": pods.name},
        "spec": {"clusterIP": "None", "selector": {"job-name": pods.name}, "ports": [{"name": "grpc", "port": PORT}]},
    }
    trainer = _trainer("train", pods, pod_args, f"{pods.name}-{INDEX}", env, pods.gpus)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": pods.name},
        "spec": {
            "completionMode": "Indexed",
            "completions": cfg.train.workers,
            "parallelism": cfg.train.workers,
            "backoffLimit": 3 * cfg.train.workers,
            "podReplacementPolicy": "Failed",  # never two pods of one index on its output dir at once
            "template": {"spec": _pod_spec(pods, trainer, subdomain=pods.name, restartPolicy="OnFailure")},
        },
    }
    return [service, job]


def tfjob(cfg: PipelineConfig, pod_args: list[str], pods: Pods) -> list[dict]:
    """A Kubeflow TFJob: Worker replicas (multi_worker), or Chief, Worker and PS (parameter_server)."""
    env = [_field_env("POD_NAME", "metadata.name"), _field_env("TASK_INDEX", TFJOB_INDEX)]

    def trainer(gpus: int) -> dict:  # the operator requires the container name "tensorflow"
        return _trainer("tensorflow", pods, pod_args, "$(POD_NAME)", env, gpus)

    def server(gpus: int) -> dict:  # a tf.distribute.Server: it needs no volume
        return _container("tensorflow", pods.image, ["python", "-m", "pipeline.training.launcher"], ["server"], [],
                          gpus)

    if cfg.train.strategy == "parameter_server":  # the workers compute; the chief coordinates, then pushes
        replicas = {"Chief": (1, trainer(0)), "Worker": (cfg.train.workers, server(pods.gpus)),
                    "PS": (cfg.train.ps, server(0))}
    elif cfg.train.strategy == "multi_worker":
        replicas = {"Worker": (cfg.train.workers, trainer(pods.gpus))}
    else:
        raise CommandLineError(f"--kind tfjob needs train.strategy=multi_worker or parameter_server; received "
                               f"{cfg.train.strategy!r}.")
    specs = {kind: {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": _pod_spec(pods, container)}}
             for kind, (n, container) in replicas.items()}
    # cleanPodPolicy Running: once the chief has pushed, the servers (which never exit) are deleted.
    return [{"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": pods.name},
             "spec": {"runPolicy": {"backoffLimit": 3, "cleanPodPolicy": "Running"}, "tfReplicaSpecs": specs}}]


def _trainer(name: str, pods: Pods, pod_args: list[str], run_dir: str, env: list[dict], gpus: int) -> dict:
    """A container running POD_SCRIPT with the pipeline's arguments, its output dir on the runs volume."""
    args = ["pipeline", *pod_args, f"output_dir={MOUNT}/{run_dir}"]
    container = _container(name, pods.image, ["sh", "-c", POD_SCRIPT], args, env, gpus)
    return {**container, "volumeMounts": [{"name": "runs", "mountPath": MOUNT}]}


def _container(name: str, image: str, command: list[str], args: list[str], env: list[dict], gpus: int) -> dict:
    container = {
        "name": name,
        "image": image,
        "command": command,
        "args": args,
        "env": [*env, {"name": "TF_USE_LEGACY_KERAS", "value": "1"}],
        "ports": [{"containerPort": PORT, "name": "tfjob-port" if name == "tensorflow" else "grpc"}],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": gpus}}
    return container


def _pod_spec(pods: Pods, container: dict, **fields) -> dict:
    """One container as the image's non-root user, with the runs volume if it mounts it (fsGroup: writable)."""
    security = {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                "fsGroupChangePolicy": "OnRootMismatch"}
    spec = {**fields, "securityContext": security, "containers": [container]}
    if "volumeMounts" in container:
        spec["volumes"] = [{"name": "runs", "persistentVolumeClaim": {"claimName": pods.claim}}]
    return spec


def _field_env(name: str, field_path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


KINDS = {"job": indexed_job, "tfjob": tfjob}
