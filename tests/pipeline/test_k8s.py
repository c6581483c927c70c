"""`python -m pipeline.k8s`: the YAML parses, and every replica gets a TF_CONFIG naming itself."""
import json

import yaml

from pipeline import k8s


def manifests(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = k8s.main(list(argv))
    captured = capsys.readouterr()
    return code, list(yaml.safe_load_all(captured.out)), captured.err


def test_indexed_job_gives_each_pod_its_own_tf_config(capsys):
    code, (service, job), _ = manifests(capsys, "train", "train.workers=3", "model.width=8", "--name", "digits")
    assert code == 0
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"job-name": "digits"}
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Job", "Indexed", 3, 3)
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
    command = container["command"]
    assert command[:5] == ["python", "-m", "pipeline.run", "--until", "train"]
    assert {"train.strategy=multi_worker", "train.workers=3", "model.width=8"} <= set(command)
    assert "output_dir=/runs/task-$(TASK_INDEX)" in command


def test_tfjob_multi_worker_leaves_tf_config_to_the_operator(capsys):
    code, (tfjob,), _ = manifests(capsys, "train", "train.workers=2", "--kind", "tfjob")
    assert code == 0 and tfjob["kind"] == "TFJob"
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert list(replicas) == ["Worker"] and replicas["Worker"]["replicas"] == 2
    (container,) = replicas["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"
    assert "TF_CONFIG" not in {e["name"] for e in container["env"]}
    assert "train.strategy=multi_worker" in container["command"]


def test_tfjob_parameter_server_runs_the_pipeline_on_the_chief_only(capsys):
    code, (tfjob,), _ = manifests(capsys, "train", "train.strategy=parameter_server", "train.workers=2",
                                  "train.ps=2", "--kind", "tfjob")
    assert code == 0
    replicas = tfjob["spec"]["tfReplicaSpecs"]
    assert {kind: r["replicas"] for kind, r in replicas.items()} == {"Chief": 1, "Worker": 2, "PS": 2}
    commands = {kind: r["template"]["spec"]["containers"][0]["command"] for kind, r in replicas.items()}
    assert commands["Chief"][:3] == ["python", "-m", "pipeline.run"]
    assert commands["Worker"] == commands["PS"] == ["python", "-m", "pipeline.training.launcher", "server"]


def test_bad_requests_exit_2_naming_the_problem(capsys):
    code, _, err = manifests(capsys, "train", "train.workers=0")
    assert code == 2 and "train.workers: expected a positive integer, received 0." in err
    code, _, err = manifests(capsys, "train", "train.strategy=parameter_server")
    assert code == 2 and "needs 'multi_worker'; received 'parameter_server'. Use --kind tfjob" in err
