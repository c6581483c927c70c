"""Kubernetes manifests that run the train stage on a cluster (printed by `python -m pipeline.k8s`).

`--kind job` (default): a headless Service and an Indexed Job of `train.workers` pods. Each pod
gets its TF_CONFIG from its completion index (the Service gives pod i the stable DNS name
<name>-i.<name>), so it runs the pipeline as that worker of a multi_worker cluster.
`--kind tfjob`: a Kubeflow TFJob; the training operator sets TF_CONFIG itself, and it also runs
`train.strategy=parameter_server` (a chief coordinator, worker and ps servers).

Every pod writes under its own dir of the `--runs-claim` volume, so a restarted pod finds its
BackupAndRestore epochs again and resumes; the chief's (pod 0's) model is the result.
"""
from __future__ import annotations

import json

from pipeline.config import PipelineConfig
from pipeline.errors import ConfigError

PORT = 2222
INDEX = "$(TASK_INDEX)"  # Kubernetes substitutes env vars written $(NAME) in env values and args


def cluster_addresses(name: str, workers: int) -> list[str]:
    """Stable DNS names of the Indexed Job's pods: hostname <name>-i in the Service's subdomain."""
    return [f"{name}-{i}.{name}:{PORT}" for i in range(workers)]


def indexed_job(cfg: PipelineConfig, pod_args: list[str], name: str, image: str, runs_claim: str) -> list[dict]:
    """A headless Service and an Indexed Job whose pod i runs as worker i."""
    if cfg.train.strategy != "multi_worker":
        raise ConfigError("the command line", [
            f"train.strategy: an Indexed Job runs identical pods, so it needs 'multi_worker'; received "
            f"{cfg.train.strategy!r}. Use --kind tfjob for 'parameter_server'."])
    cluster = json.dumps({"worker": cluster_addresses(name, cfg.train.workers)})
    tf_config = f'{{"cluster": {cluster}, "task": {{"type": "worker", "index": {INDEX}}}}}'
    env = [
        {"name": "TASK_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "TF_CONFIG", "value": tf_config},  # after TASK_INDEX: only earlier vars are substituted
    ]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"clusterIP": "None", "selector": {"job-name": name}, "ports": [{"name": "grpc", "port": PORT}]},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": cfg.train.workers,
            "parallelism": cfg.train.workers,
            "backoffLimit": 3 * cfg.train.workers,
            "template": {"spec": {
                "subdomain": name,
                "restartPolicy": "OnFailure",
                "containers": [container("train", image, pipeline_command(pod_args, f"task-{INDEX}"), env)],
                "volumes": [runs_volume(runs_claim)],
            }},
        },
    }
    return [service, job]


def tfjob(cfg: PipelineConfig, pod_args: list[str], name: str, image: str, runs_claim: str) -> list[dict]:
    """A Kubeflow TFJob: Worker replicas (multi_worker), or Chief, Worker and PS (parameter_server)."""
    pipeline = pipeline_command(pod_args, "$(POD_NAME)")
    server = ["python", "-m", "pipeline.training.launcher", "server"]
    if cfg.train.strategy == "parameter_server":
        replicas = {"Chief": (1, pipeline), "Worker": (cfg.train.workers, server), "PS": (cfg.train.ps, server)}
    elif cfg.train.strategy == "multi_worker":
        replicas = {"Worker": (cfg.train.workers, pipeline)}
    else:
        raise ConfigError("the command line", [
            f"train.strategy: a TFJob needs 'multi_worker' or 'parameter_server'; received {cfg.train.strategy!r}."])
    specs = {
        kind: {
            "replicas": n,
            "restartPolicy": "OnFailure",
            "template": {"spec": {  # the operator requires the container name "tensorflow"
                "containers": [container("tensorflow", image, command, [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}])],
                "volumes": [runs_volume(runs_claim)],
            }},
        }
        for kind, (n, command) in replicas.items()
    }
    return [{"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
             "spec": {"runPolicy": {"backoffLimit": 3}, "tfReplicaSpecs": specs}}]


def pipeline_command(pod_args: list[str], run_dir: str) -> list[str]:
    """The same pipeline as on a laptop, up to the train stage, each pod under its own runs dir."""
    return ["python", "-m", "pipeline.run", "--until", "train", *pod_args, f"output_dir=/runs/{run_dir}"]


def container(name: str, image: str, command: list[str], env: list[dict]) -> dict:
    return {
        "name": name,
        "image": image,
        "command": list(command),
        "env": [*env, {"name": "TF_USE_LEGACY_KERAS", "value": "1"}],
        "ports": [{"containerPort": PORT, "name": "tfjob-port" if name == "tensorflow" else "grpc"}],
        "volumeMounts": [{"name": "runs", "mountPath": "/runs"}],
    }


def runs_volume(claim: str) -> dict:
    return {"name": "runs", "persistentVolumeClaim": {"claimName": claim}}


KINDS = {"job": indexed_job, "tfjob": tfjob}
