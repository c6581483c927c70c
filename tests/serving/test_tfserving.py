"""`python -m serving.tfserving`: bundles built from real repositories, checked offline the way TF Serving,
Docker and Kubernetes would read them, then served (by our server, and by tensorflow_model_server when it
is on PATH) from the bundle's own files and flags; bad input fails in one line with nothing written; the
batching sweep writes a file TF Serving parses.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import half_plus_two
import kubernetes_validate
import pytest
import requests
import yaml
from dockerfile_parse import DockerfileParser
from google.protobuf import text_format
from repo_files import copy_version, write_config

from localhost.ports import free_ports
from pipeline.artifacts import SHIPPED_SAMPLE_REQUEST
from serving import protos
from serving.__main__ import build_parser
from serving.batching import BatchingParameters
from serving.model_config import ModelServerConfig, load_model_server_config
from serving.process import ServerProcess, wait_available
from serving.tfserving import k8s, sweep
from serving.tfserving.__main__ import main
from tests.exported import export

pytestmark = pytest.mark.xdist_group("test_tfserving")  # its module-scoped server starts once, in one worker
TF_SERVING = importlib.metadata.version("tensorflow-serving-api")
SWEEP_FILE = "# measured elsewhere\nmax_batch_size { value: 16 }\nbatch_timeout_micros { value: 1000 }\n"
LABELS = 'model_version_policy { specific { versions: 2 versions: 3 } } ' \
         'version_labels { key: "stable" value: 2 } version_labels { key: "canary" value: 3 }'


@pytest.fixture(scope="module")
def repo(tmp_path_factory, half_plus_two_base, digits) -> Path:
    """As the model registry leaves it: hpt versions 1, 2 (y = x/2 + 2) and 3 (y = x/2 + 3), a models.config
    serving 2 and 3 with labels, digits from its own base path with its requests logged (`registry logging`) and
    `explained`, a model exported by the pipeline's code with its explain signature and sample request, and a sweep's
    batching file."""
    repo = tmp_path_factory.mktemp("registry")
    copy_version(half_plus_two_base, 123, repo / "hpt" / "1")
    copy_version(half_plus_two_base, 123, repo / "hpt" / "2")
    half_plus_two.build(repo / "hpt" / "3", offset=3.0)
    export(repo / "explained" / "1", 4, explain=True)
    (repo / "explained" / "1" / SHIPPED_SAMPLE_REQUEST).write_text('{"instances": [[1.0, 2.0, 3.0, 4.0]]}')
    logged = ('logging_config { log_collector_config { type: "tfrecord" filename_prefix: "/var/log/digits" } '
              'sampling_config { sampling_rate: 1.0 } }')
    write_config(repo / "models.config", [("hpt", repo / "hpt", LABELS), ("digits", digits.base, logged),
                                          ("explained", repo / "explained", "")])
    (repo / "batching_parameters.txt").write_text(SWEEP_FILE)
    return repo


def build(*argv: str) -> int:
    return main(["build", *map(str, argv)])


@pytest.fixture(scope="module")
def bundle(repo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    assert build("--repository", repo, "--out", out, "--name", "hpt-serving", "--gpus", "2") == 0
    return out


def models_config(bundle: Path) -> ModelServerConfig:
    return protos.parse_text((bundle / "models.config").read_text(), ModelServerConfig, "models.config")


def dockerfile(path: Path) -> dict[str, list[str]]:
    """Instruction -> values, as Docker reads the file."""
    instructions: dict[str, list[str]] = {}
    for instruction in DockerfileParser(fileobj=io.BytesIO(path.read_bytes())).structure:
        instructions.setdefault(instruction["instruction"], []).append(instruction["value"])
    return instructions


def manifest(bundle: Path, name: str) -> dict:
    return yaml.safe_load((bundle / "k8s" / name).read_text())


def test_the_bundle_serves_what_the_repository_config_says(bundle, repo, digits):
    assert sorted(p.relative_to(bundle).as_posix() for p in (bundle / "models").glob("*/*")) == \
        ["models/digits/1", "models/explained/1", "models/hpt/2", "models/hpt/3"]  # hpt/1 is not served: not copied
    assert (bundle / "models/hpt/3/saved_model.pb").read_bytes() == (repo / "hpt/3/saved_model.pb").read_bytes()
    hpt, digits_model, _ = models_config(bundle).model_config_list.config
    assert (hpt.name, hpt.base_path, digits_model.base_path) == ("hpt", "/models/hpt", "/models/digits")
    assert list(hpt.model_version_policy.specific.versions) == [2, 3]
    assert dict(hpt.version_labels) == {"stable": 2, "canary": 3}
    assert not digits_model.HasField("logging_config")  # TF Serving's open-source build would refuse to start
    assert (bundle / "batching_parameters.txt").read_text() == SWEEP_FILE  # the sweep's file, comments and all
    readme = (bundle / "README.md").read_text()  # how to ask `explained` why (hpt and digits have no explain)
    assert "`explained` answers why, with an `explain` signature" in readme
    assert ("jq '. + {signature_name: \"explain\"}' models/explained/1/assets.extra/sample_request.json \\\n"
            "  | curl -d @- localhost:8501/v1/models/explained:predict") in readme


def test_a_repository_without_config_serves_every_model_at_its_latest_version(half_plus_two_base, digits, tmp_path):
    repo = tmp_path / "repo"
    copy_version(half_plus_two_base, 123, repo / "half_plus_two" / "123")
    copy_version(half_plus_two_base, 123, repo / "half_plus_two" / "124")
    shutil.copytree(digits.base, repo / "digits")
    (repo / "empty").mkdir()
    assert build("--repository", repo, "--out", tmp_path / "bundle", "--gpus", "0") == 0
    bundle = tmp_path / "bundle"
    config = models_config(bundle)
    models = config.model_config_list.config
    assert [(m.name, m.base_path, m.model_version_policy.latest.num_versions) for m in models] == \
        [("digits", "/models/digits", 1), ("half_plus_two", "/models/half_plus_two", 1)]
    assert sorted(p.name for p in (bundle / "models/half_plus_two").iterdir()) == ["124"]
    defaults = BatchingParameters.from_text((bundle / "batching_parameters.txt").read_text())
    assert defaults.max_batch_size == 128 and "batching guide" in (bundle / "batching_parameters.txt").read_text()
    (server,) = manifest(bundle, "deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert server["image"] == f"maas-serving:{TF_SERVING}" and "nvidia.com/gpu" not in server["resources"]["limits"]


def test_every_config_file_parses_with_tf_servings_protos(bundle):
    load_model_server_config(str(bundle / "models.config"))  # parsed and checked as our server does
    text_format.Parse((bundle / "batching_parameters.txt").read_text(), protos.BatchingParameters())
    assert BatchingParameters.from_text((bundle / "batching_parameters.txt").read_text()).max_batch_size == 16
    monitoring = protos.parse_text((bundle / "monitoring.config").read_text(), protos.MonitoringConfig, "monitoring")
    assert monitoring.prometheus_config.enable and monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
    files = manifest(bundle, "configmap.yaml")["data"]
    assert files == {name: (bundle / name).read_text()
                     for name in ("models.config", "batching_parameters.txt", "monitoring.config")}


def test_kubernetes_manifests_pass_the_strict_schemas(bundle):
    version = kubernetes_validate.latest_version()
    for path in sorted((bundle / "k8s").iterdir()):
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)
    deployment = manifest(bundle, "deployment.yaml")
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == f"hpt-serving:{TF_SERVING}-gpu"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 2 and server["resources"]["requests"]["cpu"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v1/models/hpt", "port": "http"}
    for probe in ("readinessProbe", "startupProbe"):  # a version AVAILABLE: test_readiness_fails_... below
        assert server[probe]["httpGet"] == {"path": "/v1/models/hpt/metadata", "port": "http"}
    assert server["args"] == container_flags(bundle)
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == manifest(bundle, "configmap.yaml")["metadata"]["name"]
    assert server["volumeMounts"] == [{"name": volume["name"], "mountPath": "/config", "readOnly": True}]
    service = manifest(bundle, "service.yaml")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8500, "http": 8501}
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    hpa = manifest(bundle, "hpa.yaml")
    assert (hpa["apiVersion"], hpa["spec"]["scaleTargetRef"]["name"]) == ("autoscaling/v2", "hpt-serving")


def container_flags(bundle: Path) -> list[str]:
    """The GPU Dockerfile's CMD: tensorflow_model_server's flags."""
    return json.loads(dockerfile(bundle / "Dockerfile.gpu")["CMD"][0])


def test_dockerfiles_build_from_the_pinned_release_with_flags_our_server_accepts(bundle):
    for name, base in [("Dockerfile.gpu", f"tensorflow/serving:{TF_SERVING}-gpu"),
                       ("Dockerfile", f"tensorflow/serving:{TF_SERVING}")]:
        instructions = dockerfile(bundle / name)
        assert instructions["FROM"] == [base]
        for copy in instructions["COPY"]:
            *sources, destination = copy.split()
            assert all((bundle / source).exists() for source in sources), copy
        assert json.loads(instructions["ENTRYPOINT"][0]) == ["/usr/bin/tensorflow_model_server"]
        flags = json.loads(instructions["CMD"][0])
        args = build_parser().parse_args(flags)  # exits on a flag `python -m serving` does not know
        assert not [k for k, v in vars(args).items() if k.startswith("unsupported_") and v is not None]
        assert args.enable_batching and args.allow_version_labels_for_unavailable_models
        assert args.model_config_file_poll_wait_seconds > 0  # labels moved in the ConfigMap apply without a restart
        assert flags == container_flags(bundle)
    services = yaml.safe_load((bundle / "docker-compose.yml").read_text())["services"]
    assert {s["build"]["dockerfile"] for s in services.values()} == {"Dockerfile.gpu", "Dockerfile"}
    gpu = services["hpt-serving-gpu"]
    assert gpu["ports"] == ["8500:8500", "8501:8501"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


# -- the bundle served ----------------------------------------------------------------------------

def local_flags(bundle: Path, work: Path) -> list[str]:
    """The container's flags with its paths pointed at the bundle (models.config copied, base paths
    rewritten), the label poll every second, and no ports (the caller chooses them)."""
    config = work / "models.config"
    config.write_text((bundle / "models.config").read_text().replace('"/models/', f'"{bundle}/models/'))
    paths = {"/config/models.config": str(config), "/config/": f"{bundle}/"}
    flags = []
    for flag in container_flags(bundle):
        name, _, value = flag.partition("=")
        if name in ("--port", "--rest_api_port"):
            continue
        if name == "--model_config_file_poll_wait_seconds":
            value = "1"
        for container_path, local in paths.items():
            value = value.replace(container_path, local)
        flags.append(f"{name}={value}")
    return flags


@contextlib.contextmanager
def serving(kind: str, flags: list[str], work: Path):
    """Our server or tensorflow_model_server on 127.0.0.1 with these flags; yields its REST URL."""
    if kind == "embedded":
        server = ServerProcess("--port=0", *flags, log_dir=work)
        try:
            server.wait_available("hpt", 2)
            server.wait_available("digits")
            server.wait_available("explained")
            yield server.url
        finally:
            assert server.stop() == 0, server.log_tail()
        return
    if shutil.which("tensorflow_model_server") is None:
        pytest.skip("tensorflow_model_server is not on PATH (install the tensorflow-model-server apt package, "
                    "or run inside the tensorflow/serving image) to serve the bundle with the real thing")
    grpc_port, rest_port = free_ports(2)
    log = work / "tf_serving.log"
    with log.open("w") as out:
        process = subprocess.Popen(["tensorflow_model_server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                                    *flags], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{rest_port}"
    try:
        for model in ("hpt", "digits", "explained"):
            wait_available(url, model, timeout_s=120, alive=lambda: process.poll() is None, describe=log.read_text)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def predict(url: str, path: str) -> list:
    response = requests.post(f"{url}/v1/models/{path}:predict", data='{"instances": [[1.0]]}', timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


@pytest.mark.slow  # a server start and a config poll: about 5 s
@pytest.mark.parametrize("kind", ["embedded", "tensorflow_model_server"])
def test_the_bundle_serves_its_labelled_versions_with_metrics(kind, bundle, tmp_path):
    flags = local_flags(bundle, tmp_path)
    with serving(kind, flags, tmp_path) as url:
        status = requests.get(f"{url}/v1/models/hpt", timeout=10).json()["model_version_status"]
        assert [(s["version"], s["state"]) for s in status] == [("3", "AVAILABLE"), ("2", "AVAILABLE")]
        assert predict(url, "hpt/labels/stable") == [[2.5]]  # version 2: x/2 + 2
        assert predict(url, "hpt/labels/canary") == [[3.5]]  # version 3: x/2 + 3
        assert predict(url, "hpt") == [[3.5]]  # the latest served version
        body = {**json.loads((bundle / "models/explained/1" / SHIPPED_SAMPLE_REQUEST).read_text()),
                "signature_name": "explain"}  # the README's request: the pipeline's explain signature, in the graph
        explained = requests.post(f"{url}/v1/models/explained:predict", json=body, timeout=30)
        assert explained.status_code == 200, explained.text
        (row,) = explained.json()["predictions"]
        assert len(row["attributions"]) == 4 and row["class_id"] in (0, 1) and 0 < row["score"] <= 1
        metrics = requests.get(f"{url}/monitoring/prometheus/metrics", timeout=10)
        assert metrics.status_code == 200 and "# TYPE" in metrics.text
        # Promote: the label moves in the config file (the ConfigMap), the running server follows.
        config = models_config(tmp_path)
        config.model_config_list.config[0].version_labels["stable"] = 3
        (tmp_path / "models.config").write_text(text_format.MessageToString(config))
        deadline = time.monotonic() + 15
        while predict(url, "hpt/labels/stable") != [[3.5]]:
            assert time.monotonic() < deadline, "the label move was not applied"
            time.sleep(0.2)


def test_readiness_fails_while_no_version_is_loaded(tmp_path, half_plus_two_base):
    """The Deployment's readiness path, asked of a server with a model whose only version is corrupt and one whose
    version loaded: not ready (404) vs ready (200). The status path says 200 for both: a pod probed there would
    take traffic it cannot serve."""
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    config = write_config(tmp_path / "models.config", [("broken", tmp_path / "broken", ""),
                                                        ("hpt", half_plus_two_base, "")])
    server = ServerProcess(f"--model_config_file={config}", "--port=0", "--file_system_poll_wait_seconds=0",
                           log_dir=tmp_path)
    try:
        server.wait_available("hpt")
        for model, ready in (("broken", False), ("hpt", True)):
            probe = k8s.deployment("x", "image", model, 0)["spec"]["template"]["spec"]["containers"][0]
            answer = requests.get(server.url + probe["readinessProbe"]["httpGet"]["path"], timeout=10)
            assert answer.ok == ready, (model, answer.status_code, answer.text)
            assert requests.get(f"{server.url}/v1/models/{model}", timeout=10).status_code == 200
    finally:
        assert server.stop() == 0, server.log_tail()


# -- bad input -------------------------------------------------------------------------------------

BAD_CONFIGS = {  # models.config text (REPO stands for the repository) -> what the error says
    "missing version": ('model_config_list { config { name: "hpt" base_path: "REPO/hpt" '
                        'model_version_policy { specific { versions: 1 versions: 7 } } } }',
                        "model 'hpt' serves version(s) [7], but REPO/hpt holds no such version with a saved_model.pb"
                        " (it has [1, 4])"),
    "version without saved_model.pb": ('model_config_list { config { name: "hpt" base_path: "REPO/hpt" '
                                       'model_version_policy { specific { versions: 5 } } } }',
                                       "serves version(s) [5], but REPO/hpt holds no such version"),
    "malformed": ('model_config_list {\n  config {\n    nme: "hpt"\n  }\n}\n',
                  "REPO/models.config: not a valid tensorflow.serving.ModelServerConfig text proto (line 3, column 5):"
                  ' Message type "tensorflow.serving.ModelConfig" has no field named "nme".'),
    "label on an unserved version": ('model_config_list { config { name: "hpt" base_path: "REPO/hpt" '
                                     'version_labels { key: "stable" value: 1 } } }',
                                     "label 'stable' points at version 1, which the config does not serve "
                                     "(it serves [4])"),
    "no models": ("model_config_list { }", "no models found"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_repository_config_fails_in_one_line_and_writes_nothing(case, half_plus_two_base, tmp_path, capsys):
    repo = tmp_path / "repo"
    copy_version(half_plus_two_base, 123, repo / "hpt" / "1")
    copy_version(half_plus_two_base, 123, repo / "hpt" / "4")
    (repo / "hpt" / "5").mkdir()  # a version being copied in: no saved_model.pb yet
    text, message = (s.replace("REPO", str(repo)) for s in BAD_CONFIGS[case])
    (repo / "models.config").write_text(text)
    assert_fails_cleanly(capsys, tmp_path, ["--repository", repo, "--out", tmp_path / "out" / "bundle"], message)


def test_no_models_missing_repository_and_existing_output_fail_in_one_line(tmp_path, capsys):
    (tmp_path / "repo" / "digits" / "1").mkdir(parents=True)  # a version dir without a SavedModel is no model
    out = tmp_path / "out" / "bundle"
    assert_fails_cleanly(capsys, tmp_path, ["--repository", tmp_path / "repo", "--out", out], "no models found")
    assert_fails_cleanly(capsys, tmp_path, ["--repository", tmp_path / "nowhere", "--out", out], "no such directory")
    assert_fails_cleanly(capsys, tmp_path, ["--repository", tmp_path / "repo", "--out", tmp_path, "--name", "x"],
                         "already exists")
    assert_fails_cleanly(capsys, tmp_path, ["--repository", tmp_path / "repo", "--out", out, "--name", "My_Model"],
                         "expected a Kubernetes name")
    assert_fails_cleanly(capsys, tmp_path, ["--repository", tmp_path / "repo", "--out", out, "--image-tag", "2.21 gpu"],
                         "expected a tensorflow/serving release tag")


def assert_fails_cleanly(capsys, tmp_path: Path, argv: list, message: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    assert build(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m serving.tfserving build: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert sorted(tmp_path.rglob("*")) == before  # no bundle, no staging directory


# -- the batching sweep ----------------------------------------------------------------------------

def test_sweep_lists_its_plan_and_refuses_bad_input(half_plus_two_base, tmp_path, capsys):
    model = copy_version(half_plus_two_base, 123, tmp_path / "repo" / "hpt" / "1").parent
    assert main(["sweep", "--model", str(model), "--list"]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "repo" / "batching_parameters.txt") in out and "no batching" not in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == len(sweep.grid("small", 2))
    for argv, message in [(["--model", str(tmp_path)], "no versions there"),
                          (["--model", str(model), "--seconds", "0.1"], "expected 0.5 to 60")]:
        assert main(["sweep", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_sweep_writes_the_best_candidate_with_its_table(half_plus_two_base, tmp_path):
    model = copy_version(half_plus_two_base, 123, tmp_path / "repo" / "hpt" / "1").parent
    candidates = [sweep.Candidate(8, 1000, 2)]  # one: each candidate is a server start
    lines = []
    result = sweep.sweep(model, candidates, seconds=0.5, p99_ms=200, log=lines.append)
    assert [line for line in lines if line.startswith("[")] == ["[1/2] no batching", "[2/2] 8, 1000, 2"]
    assert result["no_batching"]["knee_per_s"] > 0 and all(r["knee_per_s"] > 0 for r in result["candidates"])
    path = tmp_path / "repo" / "batching_parameters.txt"
    sweep.write(result, path)
    text = path.read_text()
    written = BatchingParameters.from_text(text, str(path))
    assert sweep.Candidate(written.max_batch_size, written.batch_timeout_micros, written.num_batch_threads) == \
        sweep.Candidate(**result["chosen"])
    table = [line for line in text.splitlines() if line.startswith("# ")]
    for row in ("# no batching", "# 8, 1000, 2", "# Machine: ", "# Chosen: "):
        assert any(line.startswith(row) for line in table), (row, text)
    assert f"{result['chosen_vs_no_batching']:.2f}x the no-batching knee" in text


# -- request logging beside TF Serving --------------------------------------------------------------

def test_the_readme_says_tf_serving_cannot_log_and_how_the_logs_are_made(bundle):
    text = (bundle / "README.md").read_text()
    assert "TensorFlow Serving's open-source build cannot log requests" in text
    assert "docker build -f logging/Dockerfile" in text and "kubectl apply -f logging/k8s/" in text
    assert not any(m.HasField("logging_config") for m in models_config(bundle).model_config_list.config)  # TF
    # Serving would refuse to start


@pytest.mark.parametrize("mode", ["canary", "mirror"])
def test_the_logging_pod_manifests_pass_the_strict_schemas(mode, repo, tmp_path):
    out = tmp_path / "bundle"
    assert build("--repository", repo, "--out", out, "--name", "hpt-serving", "--request-logging", mode,
                 "--log-sampling-rate", "0.25") == 0
    version = kubernetes_validate.latest_version()
    for path in sorted((out / "logging" / "k8s").iterdir()):
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)
    logging_pod = yaml.safe_load((out / "logging/k8s/deployment.yaml").read_text())["spec"]
    service = manifest(out, "service.yaml")["spec"]["selector"]
    labels = logging_pod["template"]["metadata"]["labels"]
    assert (service.items() <= labels.items()) == (mode == "canary")  # a canary takes its share of the Service
    assert logging_pod["selector"]["matchLabels"].items() <= labels.items()
    assert not manifest(out, "deployment.yaml")["spec"]["selector"]["matchLabels"].items() \
        <= logging_pod["selector"]["matchLabels"].items()  # the TF Serving Deployment does not own its pods
    (server,) = logging_pod["template"]["spec"]["containers"]
    args = build_parser().parse_args(server["args"])  # flags `python -m serving` takes
    assert server["command"] == ["python", "-m", "serving"] and args.model_config_file == "/config/models.config"
    claim = yaml.safe_load((out / "logging/k8s/pvc.yaml").read_text())
    claim_bytes = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Gi")) * 2**30
    assert 0 < args.request_log_max_disk_bytes < claim_bytes
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in logging_pod["template"]["spec"]["volumes"]}
    assert volumes["request-logs"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    config = yaml.safe_load((out / "logging/k8s/configmap.yaml").read_text())["data"]["models.config"]
    assert config == (out / "logging" / "models.config").read_text()
    path = tmp_path / "logging.config"
    path.write_text(config)
    logged = load_model_server_config(str(path))  # our server's checks, logging_config included
    assert [(m.name, m.logging_config.log_collector_config.type, m.logging_config.log_collector_config.filename_prefix,
             m.logging_config.sampling_config.sampling_rate) for m in logged.model_config_list.config] == \
        [(name, "tfrecord", f"{mounts['request-logs']}/{name}", 0.25) for name in ("hpt", "digits", "explained")]
    unlogged = models_config(out)
    for model in logged.model_config_list.config:
        model.ClearField("logging_config")
    assert logged == unlogged  # the same models, versions and labels as the TF Serving replicas
    instructions = dockerfile(out / "logging" / "Dockerfile")
    assert json.loads(instructions["CMD"][0]) == ["python", "-m", "serving", *server["args"]]
    for copy in instructions["COPY"]:
        *sources, _ = copy.split()
        assert all((out / source).exists() for source in sources), copy
