"""Every shell and Python block in README.md, run in order as a newcomer would paste them, against a real server on
127.0.0.1, so the README cannot rot. The tour's pipeline commands run for real, with CI's settings: the shared
digits run's (tests/conftest.py), so a command that trains from scratch finds what that run computed in the
stage cache, and the online update trains for real; the others are checked with --list (they parse and plan;
test_pipeline_cli.py runs the pipeline end to end); registry commands run on the pushed model, `make serve`
really serves, curl really queries it, and each ```python block runs as a script in the same directory."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from localhost.ports import free_ports
from serving.process import wait_available
from tests.pipeline_cli import DIGITS_RUN, pipeline_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TOUR = "A five-minute tour"  # its pipeline commands run for real
CI_SETTINGS = DIGITS_RUN  # appended to a tour command that trains from scratch
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


def readme_blocks() -> list[tuple[str, str, str]]:
    """(section, language, text) of every ```sh and ```python block, in the README's order."""
    blocks, section = [], ""
    for part in re.split(r"^(## [^\n]*|```(?:sh|python)\n.*?^```)$", (ROOT / "README.md").read_text(),
                         flags=re.M | re.S):
        if part.startswith("## "):
            section = part[3:].strip()
        elif part.startswith("```"):
            language, _, text = part.removeprefix("```").removesuffix("```").partition("\n")
            blocks.append((section, language, text))
    return blocks


def readme_commands() -> list[tuple[str, str]]:
    """(section, command) of every ```sh block's command (continued lines joined, comments dropped)."""
    commands = []
    for section, language, text in readme_blocks():
        for line in text.replace("\\\n", " ").splitlines() if language == "sh" else []:
            words = shlex.split(line, comments=True)
            if words:
                commands.append((section, shlex.join(words)))
    return commands


def test_the_readme_has_commands_for_each_part():
    commands = [command for _, command in readme_commands()]
    assert {"make run", "make test", "make serve"} <= set(commands)
    assert sum(c.startswith("curl ") for c in commands) >= 4
    assert sum(c.startswith(".venv/bin/python -m pipeline.run") for c in commands) >= 5
    assert [language for _, language, _ in readme_blocks()].count("python") >= 1


def my_csv(workdir: Path) -> None:
    """The table the README's "Your table" command names: iris, its label in `species`."""
    from sklearn.datasets import load_iris

    data = load_iris()
    rows = [",".join([*map(str, row), data.target_names[target]]) for row, target in zip(data.data, data.target)]
    (workdir / "my.csv").write_text("\n".join([",".join([*data.feature_names, "species"]), *rows]) + "\n")


def wait_answers(url: str, timeout_s: float = 30) -> None:
    """Until GET `url` answers 200: a label's metadata, once the server's config poll has read the label."""
    deadline = time.monotonic() + timeout_s
    while requests.get(url, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout_s} s"
        time.sleep(0.2)


def test_every_readme_block_works(digits, tmp_path):
    digits = digits.copy(tmp_path / "work")  # the README's commands label, publish and collect in it
    my_csv(digits.workdir)
    rest_port, grpc_port = free_ports(2)
    production = tmp_path / "production"  # where bundles are built from the pushed model_repository
    production.mkdir()
    (production / "model_repository").symlink_to(digits.workdir / "model_repository")
    server = None

    def run(argv: list[str], where: Path = digits.workdir, timeout_s: int = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(argv, cwd=where, env=pipeline_env(), capture_output=True, text=True, timeout=timeout_s)
        assert result.returncode == 0, (argv, result.stdout[-2000:], result.stderr[-2000:])
        return result

    try:
        for section, language, text in readme_blocks():
            if language == "python":  # as pasted into a script: it runs to the end, and prints what it says
                (tmp_path / "snippet.py").write_text(text)
                assert run([sys.executable, str(tmp_path / "snippet.py")]).stdout.strip()
                continue
            for line in text.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if not words or shlex.join(words) in NOT_RUN_HERE or words[0] in NOT_RUN_HERE_PROGRAMS:
                    continue
                command = shlex.join(words)
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
                    label = re.search(r"(/v1/models/[^/]+/labels/[^/:]+):", url[-1])
                    if label:  # a label set just now: the server reads models.config each second
                        wait_answers(f"http://127.0.0.1:{rest_port}{label.group(1)}/metadata")
                    result = run(["curl", "-sS", "--fail-with-body", *url], timeout_s=60)
                    assert "error" not in json.loads(result.stdout), (command, result.stdout)
                elif words[:2] == [".venv/bin/python", "-c"]:  # a snippet against the server `make serve` started
                    run([sys.executable, "-c", words[2].replace("localhost:8500", f"127.0.0.1:{grpc_port}")])
                elif words[:3] == [".venv/bin/python", "-m", "pipeline.registry"]:
                    run([sys.executable, *(w.replace("localhost:8500", f"127.0.0.1:{grpc_port}") for w in words[1:])])
                elif words[:3] == [".venv/bin/python", "-m", "pipeline.monitor"]:  # on what the server logged
                    result = subprocess.run([sys.executable, *words[1:]], cwd=digits.workdir, env=pipeline_env(),
                                            capture_output=True, text=True, timeout=120)
                    assert result.returncode in ((0, 3) if words[3] == "drift" else (0,)), (command, result.stderr)
                    assert "logged rows of 'digits'" in result.stdout, (command, result.stdout)
                elif words[:3] == [".venv/bin/python", "-m", "pipeline.run"]:
                    args = [digits.run_id if w == "RUN_ID" else w for w in words[3:]]
                    if section == TOUR:  # for real; a tour command training from scratch with CI's epochs
                        run([sys.executable, "-m", "pipeline.run", *args,
                             *(() if any(a.startswith("train.init_from=") for a in args) else CI_SETTINGS)])
                    else:
                        run([sys.executable, "-m", "pipeline.run", *args, *([] if "--gc" in args else ["--list"])])
                elif words[:3] == [".venv/bin/python", "-m", "pipeline.k8s"]:  # what it prints, not what kubectl does
                    args = words[3:words.index("|")] if "|" in words else words[3:]
                    result = run([sys.executable, "-m", "pipeline.k8s", *args])
                    assert all(d["kind"] for d in yaml.safe_load_all(result.stdout)), (command, result.stdout)
                elif words[:3] == [".venv/bin/python", "-m", "serving.tfserving"]:
                    # build runs for real on the pushed digits model; sweep (minutes of load) prints its plan
                    # (test_tfserving.py runs a short sweep)
                    run([sys.executable, "-m", "serving.tfserving", *words[3:], *(["--list"] if words[3] == "sweep"
                                                                                  else [])], where=production)
                else:
                    pytest.fail(f"README command {command!r}: this test does not know how to run it; teach it")
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
