"""Every shell block in README.md, run as a newcomer would run it, against a real server on 127.0.0.1,
so the README's commands cannot rot. Pipeline commands are checked with --list (they parse and plan;
the full pipeline runs in test_pipeline_cli.py), registry commands run on the pushed model, `make serve`
really serves, curl really queries it."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from localhost.ports import free_ports
from serving.process import wait_available
from tests.pipeline_cli import pipeline_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NOT_RUN_HERE = {  # command -> why this test leaves it out
    "make run": "the whole pipeline: test_pipeline_cli.py runs it end to end",
    "make test": "the test suite itself: CI runs it",
}
NOT_RUN_HERE_PROGRAMS = {  # first word -> why this test leaves such commands out
    "docker": "no Docker engine here: tests/pipeline/test_image.py and tests/serving/test_tfserving.py parse the "
              "Dockerfiles (and the bundle's files are served by our server)",
    "kubectl": "no cluster here: tests/pipeline/test_k8s.py and tests/serving/test_tfserving.py check the manifests "
               "against Kubernetes' schemas",
}


def readme_commands() -> list[str]:
    """The commands of every ```sh block (continued lines joined, comments dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def test_the_readme_has_commands_for_each_part():
    commands = readme_commands()
    assert {"make run", "make test", "make serve"} <= set(commands)
    assert sum(c.startswith("curl ") for c in commands) >= 4
    assert sum(c.startswith(".venv/bin/python -m pipeline.run") for c in commands) >= 5


def test_every_readme_command_works(digits, tmp_path):
    rest_port, grpc_port = free_ports(2)
    production = tmp_path / "production"  # where bundles are built from the pushed model_repository
    production.mkdir()
    (production / "model_repository").symlink_to(digits.workdir / "model_repository")
    server = None
    try:
        for command in readme_commands():
            words = shlex.split(command)
            if command in NOT_RUN_HERE or words[0] in NOT_RUN_HERE_PROGRAMS:
                continue
            if command == "make serve" and server is not None:
                continue  # the tour and the serving section both start it
            if command == "make serve":
                server = subprocess.Popen(
                    ["make", "-s", "-C", str(ROOT), "serve", f"REST_PORT={rest_port}", f"GRPC_PORT={grpc_port}",
                     f"REPOSITORY={digits.workdir / 'model_repository'}"], start_new_session=True,
                    stdout=(tmp_path / "server.log").open("w"), stderr=subprocess.STDOUT)
                wait_available(f"http://127.0.0.1:{rest_port}", "digits", timeout_s=120,
                               alive=lambda: server.poll() is None, describe=(tmp_path / "server.log").read_text)
            elif words[0] == "curl":
                assert server is not None, "the README queries the server before `make serve` starts it"
                url = [w.replace("localhost:8501", f"127.0.0.1:{rest_port}") for w in words[1:]]
                result = subprocess.run(["curl", "-sS", "--fail-with-body", *url], cwd=digits.workdir,
                                        capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, (command, result.stdout, result.stderr)
                assert "error" not in json.loads(result.stdout), (command, result.stdout)
            elif words[:2] == [".venv/bin/python", "-c"]:  # a snippet against the server `make serve` started
                code = words[2].replace("localhost:8500", f"127.0.0.1:{grpc_port}")
                result = subprocess.run([sys.executable, "-c", code], cwd=digits.workdir, env=pipeline_env(),
                                        capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, (command, result.stderr[-2000:])
            elif words[:3] == [".venv/bin/python", "-m", "pipeline.registry"]:
                result = subprocess.run([sys.executable, *words[1:]], cwd=digits.workdir, env=pipeline_env(),
                                        capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, (command, result.stderr[-2000:])
            elif words[:3] == [".venv/bin/python", "-m", "pipeline.run"]:
                args = [digits.run_id if w == "RUN_ID" else w for w in words[3:]]
                listing = [] if "--gc" in args else ["--list"]
                result = subprocess.run([sys.executable, "-m", "pipeline.run", *args, *listing], cwd=digits.workdir,
                                        env=pipeline_env(), capture_output=True, text=True, timeout=120)
                assert result.returncode == 0, (command, result.stderr[-2000:])
            elif words[:3] == [".venv/bin/python", "-m", "pipeline.k8s"]:  # what it prints, not what kubectl does
                args = words[3:words.index("|")] if "|" in words else words[3:]
                result = subprocess.run([sys.executable, "-m", "pipeline.k8s", *args], cwd=digits.workdir,
                                        env=pipeline_env(), capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, (command, result.stderr)
                assert all(d["kind"] for d in yaml.safe_load_all(result.stdout)), (command, result.stdout)
            elif words[:3] == [".venv/bin/python", "-m", "serving.tfserving"]:
                # build runs for real on the pushed digits model; sweep (minutes of load) prints its plan
                # (test_tfserving.py runs a short sweep)
                listing = ["--list"] if words[3] == "sweep" else []
                result = subprocess.run([sys.executable, "-m", "serving.tfserving", *words[3:], *listing],
                                        cwd=production, env=pipeline_env(), capture_output=True, text=True,
                                        timeout=120)
                assert result.returncode == 0, (command, result.stderr[-2000:])
            else:
                pytest.fail(f"README command {command!r}: this test does not know how to run it; teach it")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
