"""`python -m pipeline.k8s`: every replica gets a TF_CONFIG naming itself, every pod that trains runs the
pipeline to train and the chief on to push, the built-in manifests validate against Kubernetes' own schemas,
and bad input is one line and exit 2."""
import json
import os
import re
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from pipeline import k8s
from pipeline.k8s_manifests import MOUNT
from tests.pipeline_cli import ROOT, pipeline_env

BUILT_IN = {"PersistentVolumeClaim", "Service", "Job"}  # schemas in kubernetes_validate; TFJob is a custom resource


def manifests(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = k8s.main(list(argv))
    captured = capsys.readouterr()
    return code, list(yaml.safe_load_all(captured.out)), captured.err


def by_kind(documents: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in documents}


def pod_specs(document: dict) -> dict[str, dict]:
    """Pod specs by replica: the Job's one template, or each TFJob replica's."""
    if document["kind"] == "Job":
        return {"Job": document["spec"]["template"]["spec"]}
    return {kind: r["template"]["spec"] for kind, r in document["spec"]["tfReplicaSpecs"].items()}


def run_pod(container: dict, env: dict[str, str], tmp_path) -> list[str]:
    """Run a container's command as the kubelet would ($(VAR) substituted from its env), with a `python`
    that records each call (and whether TF_CONFIG was set) instead of running it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\necho "${TF_CONFIG:+[TF_CONFIG] }$*" >> "$CALLS"\n')
    fake.chmod(0o755)
    calls = tmp_path / f"calls-{len(list(tmp_path.glob('calls-*')))}.txt"
    calls.touch()
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in [*container["command"], *container["args"]]]
    subprocess.run(argv, env={"PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls), **env}, check=True,
                   timeout=30)
    return calls.read_text().splitlines()


def test_indexed_job_gives_each_pod_its_own_tf_config(capsys):
    code, documents, _ = manifests(capsys, "train", "train.workers=3", "model.width=8", "--name", "digits")
    assert code == 0
    service, job = by_kind(documents)["Service"], by_kind(documents)["Job"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": "digits"}
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "digits"  # pod i resolves as digits-i.digits
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    names = [e["name"] for e in container["env"]]
    assert names.index("TASK_INDEX") < names.index("TF_CONFIG")  # Kubernetes substitutes earlier vars only
    assert "job-completion-index" in env["TASK_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    for index in range(3):
        tf_config = json.loads(env["TF_CONFIG"]["value"].replace("$(TASK_INDEX)", str(index)))
        assert tf_config == {"cluster": {"worker": [f"digits-{i}.digits:2222" for i in range(3)]},
                             "task": {"type": "worker", "index": index}}
    assert {"train.strategy=multi_worker", "train.workers=3", "model.width=8"} <= set(container["args"])


def test_the_chief_runs_the_pipeline_to_push_and_the_other_workers_stop_after_train(capsys, tmp_path):
    code, documents, _ = manifests(capsys, "train", "train.workers=2")
    assert code == 0
    (container,) = by_kind(documents)["Job"]["spec"]["template"]["spec"]["containers"]
    tf_config = next(e["value"] for e in container["env"] if e["name"] == "TF_CONFIG")
    calls = {i: run_pod(container, {"TASK_INDEX": str(i), "TF_CONFIG": tf_config.replace("$(TASK_INDEX)", str(i))},
                        tmp_path) for i in range(2)}
    args = (f"train.strategy=multi_worker push.repository={MOUNT}/model_repository train.workers=2 "
            f"output_dir={MOUNT}/maas-train-")
    assert calls[1] == [f"[TF_CONFIG] -m pipeline.run --until train {args}1"]
    # the chief trains as worker 0, then runs the whole pipeline (train cached) in a process outside the cluster
    assert calls[0] == [f"[TF_CONFIG] -m pipeline.run --until train {args}0", f"-m pipeline.run {args}0"]


def test_tfjob_multi_worker_leaves_tf_config_to_the_operator_and_worker_0_pushes(capsys, tmp_path):
    code, (_, tfjob), _ = manifests(capsys, "train", "train.workers=2", "--kind", "tfjob")
    assert code == 0 and tfjob["kind"] == "TFJob"
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert list(replicas) == ["Worker"] and replicas["Worker"]["replicas"] == 2
    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert "TF_CONFIG" not in {e["name"] for e in container["env"]}
    index = next(e for e in container["env"] if e["name"] == "TASK_INDEX")["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['training.kubeflow.org/replica-index']"  # the operator's label
    operator_config = {"TF_CONFIG": '{"cluster": {}}', "POD_NAME": "maas-train-worker-1", "TASK_INDEX": "1"}
    worker_1 = run_pod(container, operator_config, tmp_path)
    worker_0 = run_pod(container, {**operator_config, "POD_NAME": "maas-train-worker-0", "TASK_INDEX": "0"}, tmp_path)
    assert len(worker_1) == 1 and "--until train" in worker_1[0] and worker_1[0].endswith("/runs/maas-train-worker-1")
    assert len(worker_0) == 2 and worker_0[1].startswith("-m pipeline.run train.strategy=multi_worker")


def test_tfjob_parameter_server_trains_on_the_servers_and_pushes_from_the_chief(capsys, tmp_path):
    code, (_, tfjob), _ = manifests(capsys, "train", "train.strategy=parameter_server", "train.workers=2",
                                    "train.ps=2", "--kind", "tfjob")
    assert code == 0
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert {kind: r["replicas"] for kind, r in replicas.items()} == {"Chief": 1, "Worker": 2, "PS": 2}
    containers = {kind: r["template"]["spec"]["containers"][0] for kind, r in replicas.items()}
    for kind in ("Worker", "PS"):
        assert containers[kind]["command"] + containers[kind]["args"] == [
            "python", "-m", "pipeline.training.launcher", "server"]
        assert "volumes" not in replicas[kind]["template"]["spec"]  # servers keep nothing
    chief = run_pod(containers["Chief"], {"TF_CONFIG": "{}", "POD_NAME": "maas-train-chief-0", "TASK_INDEX": "0"},
                    tmp_path)
    args = (f"push.repository={MOUNT}/model_repository train.strategy=parameter_server train.workers=2 train.ps=2 "
            f"output_dir={MOUNT}/maas-train-chief-0")
    assert chief == [f"[TF_CONFIG] -m pipeline.run --until train {args}", f"-m pipeline.run {args}"]
    assert tfjob["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"  # the servers go once the chief is done


def test_each_pod_keeps_its_runs_on_the_volume_so_a_restart_resumes(capsys):
    for kind, run_dir in (("job", "maas-train-$(TASK_INDEX)"), ("tfjob", "$(POD_NAME)")):
        _, documents, _ = manifests(capsys, "train", "--kind", kind)
        for pod in pod_specs(documents[-1]).values():
            (container,) = pod["containers"]
            # a dir per pod named by its index or its name, never by a run id: when the container restarts (or
            # the pod is replaced) it finds the stage cache and train's .backup/ epochs there again
            assert container["args"][-1] == f"output_dir={MOUNT}/{run_dir}"
            assert container["volumeMounts"] == [{"name": "runs", "mountPath": MOUNT}]
            assert pod["volumes"] == [{"name": "runs", "persistentVolumeClaim": {"claimName": "maas-runs"}}]
        restart = documents[-1]["spec"]["template"]["spec"] if kind == "job" else \
            documents[-1]["spec"]["tfReplicaSpecs"]["Worker"]
        assert restart["restartPolicy"] == "OnFailure"


ARGVS = [
    ("train", "train.workers=2"),
    ("train", "train.workers=4", "--gpus", "2", "--storage", "50Gi", "--storage-class", "nfs", "--name", "big"),
    ("train", "--no-pvc", "--runs-claim", "shared", "--access-mode", "ReadWriteOnce"),
    ("train", "--kind", "tfjob", "train.strategy=parameter_server", "train.workers=2", "--gpus", "1"),
    ("train", "--kind", "tfjob", "train.workers=3"),
]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_built_in_manifests_validate_strictly_against_kubernetes_schemas(capsys, argv):
    code, documents, _ = manifests(capsys, *argv)
    assert code == 0 and {d["kind"] for d in documents} <= BUILT_IN | {"TFJob"}
    for document in documents:
        if document["kind"] == "TFJob":  # no schema there: each replica's pod template is checked as one
            for kind, replica in document["spec"]["tfReplicaSpecs"].items():
                validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": kind.lower()},
                          "template": replica["template"]})
        else:
            validate(document)


def validate(document: dict) -> None:
    try:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{document['kind']} does not validate: {e.message} at {list(e.absolute_path)}") from None


@pytest.mark.parametrize("argv", [a for a in ARGVS if "tfjob" in a], ids=" ".join)
def test_tfjob_has_the_training_operators_structure(capsys, argv):
    """The Kubeflow TFJob (kubeflow.org/v1) is a custom resource kubernetes_validate has no schema for: its
    structure is checked here against the training operator's API instead."""
    _, documents, _ = manifests(capsys, *argv)
    tfjob = by_kind(documents)["TFJob"]
    assert (tfjob["apiVersion"], set(tfjob), set(tfjob["spec"])) == (
        "kubeflow.org/v1", {"apiVersion", "kind", "metadata", "spec"}, {"runPolicy", "tfReplicaSpecs"})
    assert set(tfjob["spec"]["runPolicy"]) <= {"backoffLimit", "cleanPodPolicy", "activeDeadlineSeconds",
                                               "ttlSecondsAfterFinished"}
    assert tfjob["spec"]["runPolicy"]["cleanPodPolicy"] in ("All", "Running", "None")
    for kind, replica in tfjob["spec"]["tfReplicaSpecs"].items():
        assert kind in ("Chief", "Master", "Worker", "PS", "Evaluator")
        assert set(replica) == {"replicas", "restartPolicy", "template"}
        assert isinstance(replica["replicas"], int) and replica["replicas"] >= 1
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow"  # the operator finds the container, and its port, by these names
        assert {"containerPort": 2222, "name": "tfjob-port"} in container["ports"]


def test_gpu_limits_only_with_gpus_and_only_where_training_computes(capsys):
    for argv in ARGVS:
        _, documents, _ = manifests(capsys, *argv)
        gpus = int(argv[argv.index("--gpus") + 1]) if "--gpus" in argv else 0
        for kind, pod in pod_specs(documents[-1]).items():
            (container,) = pod["containers"]
            limits = container.get("resources", {}).get("limits", {})
            computes = kind in ("Job", "Worker")  # the Chief of parameter_server coordinates, PS holds variables
            assert limits == ({"nvidia.com/gpu": gpus} if gpus and computes else {}), (argv, kind)
            assert container["image"] == ("maas-pipeline:latest-gpu" if gpus else "maas-pipeline:latest")
    _, documents, _ = manifests(capsys, "train", "--gpus", "1", "--image", "registry.example.com/maas:1")
    assert pod_specs(documents[-1])["Job"]["containers"][0]["image"] == "registry.example.com/maas:1"


def test_the_claim_is_emitted_sized_and_named_or_left_out(capsys):
    _, documents, _ = manifests(capsys, "train")
    claim = documents[0]
    assert claim["kind"] == "PersistentVolumeClaim" and claim["metadata"]["name"] == "maas-runs"
    assert claim["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}
    _, documents, _ = manifests(capsys, "train", "--storage", "50Gi", "--storage-class", "nfs", "--runs-claim", "r")
    assert documents[0]["spec"]["storageClassName"] == "nfs"
    assert documents[0]["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pod_specs(documents[-1])["Job"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "r"}
    _, documents, _ = manifests(capsys, "train", "--no-pvc", "--runs-claim", "existing")
    assert [d["kind"] for d in documents] == ["Service", "Job"]
    assert pod_specs(documents[-1])["Job"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "existing"}


def test_options_and_overrides_come_in_any_order(capsys):
    orders = [
        ("train", "--kind", "tfjob", "train.workers=2", "train.strategy=parameter_server"),
        ("--kind", "tfjob", "train", "train.workers=2", "--gpus", "0", "train.strategy=parameter_server"),
        ("train", "train.workers=2", "train.strategy=parameter_server", "--kind=tfjob"),
    ]
    outputs = []
    for argv in orders:
        code, documents, err = manifests(capsys, *argv)
        assert (code, err) == (0, "")
        outputs.append(documents)
    assert outputs[0] == outputs[1] == outputs[2]
    assert by_kind(outputs[0])["TFJob"]["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2


def test_the_real_cli_prints_yaml_for_kubectl():
    result = subprocess.run([sys.executable, "-m", "pipeline.k8s", "train", "--kind", "tfjob", "train.workers=2",
                             "train.strategy=parameter_server"], cwd=ROOT, env=pipeline_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [d["kind"] for d in yaml.safe_load_all(result.stdout)] == ["PersistentVolumeClaim", "TFJob"]
    assert "      set -e\n" in result.stdout  # the pod script reads as a block, not an escaped string


@pytest.mark.parametrize("argv, message", [
    (("train", "--kind", "deployment"), "argument --kind: invalid choice: 'deployment' (choose from"),
    (("train", "train.strategy=parameter_server"), "--kind job runs identical pods, so it needs "
     "train.strategy=multi_worker; received 'parameter_server'. Use --kind tfjob"),
    (("train", "--kind", "tfjob", "train.strategy=mirrored"), "needs train.strategy=multi_worker or "
     "parameter_server; received 'mirrored'"),
    (("train", "train.workers"), "'train.workers': an override must look like key.sub=value"),
    (("train", "train.wrokers=2"), "train.wrokers: unknown key. Did you mean 'train.workers'?"),
    (("train", "train.workers=0"), "train.workers: expected a positive integer, received 0."),
    (("train", "push.repository=/models"), "push.repository=/models: pods keep only what is on the runs volume"),
    (("train", "output_dir=runs"), "output_dir: each pod writes under /runs/<pod name>"),
    (("train", "--storage", "20GB"), "argument --storage: expected a Kubernetes quantity like 20Gi"),
    (("train", "--config", "my.yaml"), "--config my.yaml: pods read their config from the image"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    code = k8s.main(list(argv))
    captured = capsys.readouterr()
    assert (code, captured.out) == (2, "")
    assert captured.err.startswith("python -m pipeline.k8s: error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err
