"""Which versions a server serves: version policies, labels and config files as TF Serving has them, and
flags checked at start. Versions swapped, broken and removed under load are in test_faults.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests
from repo_files import write_config

from localhost.ports import free_port
from repository import publish
from serving.process import ServerProcess
from serving.model_config import ModelConfig, aspired_versions, load_model_server_config

# its tests start servers: in one worker they run in turn (spread over two, their starts overlap)
pytestmark = pytest.mark.xdist_group("test_model_lifecycle")


def test_version_policies_choose_like_tf_serving():
    latest = ModelConfig()
    assert aspired_versions([1, 5, 3], latest) == {5}
    latest.model_version_policy.latest.num_versions = 2
    assert aspired_versions([1, 5, 3], latest) == {3, 5}
    every = ModelConfig()
    every.model_version_policy.all.SetInParent()
    assert aspired_versions([1, 5, 3], every) == {1, 3, 5}
    specific = ModelConfig()
    specific.model_version_policy.specific.versions.extend([3, 9])
    assert aspired_versions([1, 5, 3], specific) == {3}


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }",
     "model names must be unique; ['a'] appear more than once"),
    ("model_config_list { config { name: '../etc' base_path: '/x' } }", "model name: expected letters"),
    ("model_config_list { config { name: 'a' } }", "model 'a' has no base_path"),
    ("model_config_list { config { name: 'a' base_path: '/x' model_platform: 'pytorch' } }",
     "model_platform 'pytorch'"),
    ("model_config_list { config { nme: 'a' } }", "not a valid tensorflow.serving.ModelServerConfig text proto"),
])
def test_bad_model_config_files_are_explained(tmp_path, text, message):
    path = tmp_path / "models.config"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        load_model_server_config(str(path))


def states(server) -> dict[str, str]:
    status = requests.get(f"{server.url}/v1/models/hpt", timeout=10).json()["model_version_status"]
    return {s["version"]: s["state"] for s in status}


def labelled(stable: int) -> str:
    return ('model_version_policy { specific { versions: 1 versions: 3 } } '
            f'version_labels {{ key: "stable" value: {stable} }} version_labels {{ key: "canary" value: 3 }}')


@pytest.mark.slow
def test_labels_and_specific_versions_from_a_config_file(tmp_path, half_plus_two_base):
    """Also: a rewritten config file is applied by the server's watcher and audited as a reload is, from peer
    "config file"; a file it cannot apply is audited once, not at every poll that tries it again."""
    base = tmp_path / "hpt"
    for _ in range(3):
        publish(half_plus_two_base / "123", base)
    config = write_config(tmp_path / "models.config", [("hpt", base, labelled(stable=1))])
    refused = subprocess.run([sys.executable, "-m", "serving", f"--model_config_file={config}", "--rest_api_port=0",
                              f"--port={free_port()}"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and re.search(  # like TF Serving: nothing is loaded when labels are first read
        "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version [13] of model hpt, "
        "which is not currently available for inference", refused.stderr)
    audit = tmp_path / "audit.jsonl"
    server = ServerProcess(f"--model_config_file={config}", "--port=0", "--allow_version_labels_for_unavailable_models",
                           "--model_config_file_poll_wait_seconds=1", f"--audit_log_file={audit}", log_dir=tmp_path)
    try:
        server.wait_available("hpt", 3)
        server.wait_available("hpt", 1)
        assert states(server) == {"3": "AVAILABLE", "1": "AVAILABLE"}
        for label in ("stable", "canary"):
            response = requests.post(f"{server.url}/v1/models/hpt/labels/{label}:predict",
                                     data='{"instances": [2.0]}', timeout=10)
            assert response.json() == {"predictions": [3.0]}
        missing = requests.post(f"{server.url}/v1/models/hpt/versions/2:predict", data='{"instances": [2.0]}')
        assert missing.status_code == 404

        for stable in (2, 3):  # version 2 is not served: refused, and tried again at each poll; then 3 applies
            write_config(tmp_path / "next.config", [("hpt", base, labelled(stable))]).replace(config)
            time.sleep(2.5)
        deadline = time.monotonic() + 30
        while "label_change" not in audit.read_text():
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
    finally:
        server.stop()
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["action"], e["target"], e["result"].split(":")[0], e["peer"], e["token_id"]) for e in entries] == [
        ("reload", "hpt", "FAILED_PRECONDITION", "config file", None),
        ("reload", "hpt", "OK", "config file", None),
        ("label_change", "hpt/stable: 1 -> 3", "OK", "config file", None),
    ]


@pytest.mark.parametrize("flags, message", [
    (["--rest_api_port=1", "--model_base_path=/x", "--bogus_flag=1"], "unrecognized arguments: --bogus_flag=1"),
    (["--rest_api_port=1", "--model_base_path=/x", "--use_alts_credentials=true"],
     "--use_alts_credentials is a tensorflow_model_server flag this server does not support"),
    (["--rest_api_port=1"], "--model_base_path or --model_config_file is required"),
    (["--rest_api_port=1", "--model_config_file=/no/such/file"], "cannot read it"),
    (["--rest_api_port=1", "--model_base_path=/x", "--enable_batching", "--batching_parameters_file=/no/file"],
     "No such file"),
    (["--rest_api_port=1", "--model_base_path=/x", "--enable_batching=maybe"], "expected true or false"),
    (["--port=0", "--rest_api_port=0", "--model_base_path=/x"], "nothing would serve"),
    (["--rest_api_port=1", "--model_base_path=/x", "--model_base_path_root=/models"],
     "--model_base_path_root '/models': the base paths of ['default'] resolve outside it"),
    (["--rest_api_port=1", "--model_base_path=/x", "--auth_allow_status"], "--auth_allow_status needs --auth_token_file"),
    (["--rest_api_port=1", "--model_base_path=/x", "--auth_token_file=/no/tokens.yaml"], "cannot be read as YAML"),
    (["--rest_api_port=1", "--model_base_path=/x", "--ssl_config_file=/no/ssl.config"], "No such file"),
    (["--rest_api_port=1", "--model_base_path=/x", "--tensorflow_session_parallelism=2",
      "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1"], "You cannot configure all."),
    (["--port=1", "--model_base_path=/x", "--grpc_max_threads=0"],
     "--grpc_max_threads=0: expected at least 1 (the threads that run gRPC calls)."),
])
def test_bad_flags_and_files_fail_at_start_with_exit_2(flags, message, capsys):
    from serving.__main__ import parse_settings

    with pytest.raises(SystemExit) as info:
        parse_settings(flags)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags, threads", [
    ([], (1, len(os.sched_getaffinity(0)))),  # ours: one thread per op, one op per core (benchmarks/results/threads.md)
    (["--tensorflow_session_parallelism=2"], (2, 2)),
    (["--tensorflow_session_parallelism=2", "--tensorflow_intra_op_parallelism=1"], (1, 0)),  # as server.cc
])
def test_session_threads_follow_tf_servings_flags(flags, threads):
    from serving.__main__ import parse_settings

    config = parse_settings(["--rest_api_port=1", "--model_base_path=/x", *flags]).session_config
    assert (config.intra_op_parallelism_threads, config.inter_op_parallelism_threads) == threads
