"""The pipeline image that `python -m pipeline.k8s` pods run (Dockerfile, Dockerfile.gpu): both parse, copy
files that exist and everything pyproject.toml installs, run as the user the pods run as, and start a real
entry point. No Docker engine is needed: the files are read with dockerfile_parse."""
import fnmatch
import io
import json
import re
import shlex
import tomllib

import pytest
from dockerfile_parse import DockerfileParser

from pipeline import k8s
from pipeline.k8s_manifests import UID
from tests.pipeline_cli import ROOT

IMAGES = {"Dockerfile": (k8s.IMAGE, "."), "Dockerfile.gpu": (k8s.GPU_IMAGE, ".[gpu]")}  # tag, what pip installs
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def parse(name: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO((ROOT / name).read_bytes()))  # read-only: nothing is written back


def instructions(name: str) -> list[tuple[str, str]]:
    return [(i["instruction"], i["value"]) for i in parse(name).structure]


def values(name: str, instruction: str) -> list[str]:
    return [value for kind, value in instructions(name) if kind == instruction]


def copy_sources(name: str) -> list[str]:
    sources = []
    for value in values(name, "COPY"):
        words = [w for w in shlex.split(value) if not w.startswith("--")]
        sources += [w.rstrip("/") for w in words[:-1]]
    return sources


def dockerignored(path: str) -> bool:
    """Docker's rule for the patterns .dockerignore uses: a pattern matching the path or one of its parents
    excludes it (`**/` at any depth, none included), a `!` pattern includes it again, the last match wins."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        include = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        forms = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, form) for prefix in prefixes for form in forms):
            ignored = not include
    return ignored


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_is_official_python_3_11_pinned_and_documents_the_tag_pipeline_k8s_uses(name):
    parser = parse(name)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", parser.baseimage), parser.baseimage  # official, pinned
    assert PYPROJECT["project"]["requires-python"] == ">=3.11,<3.12"
    assert parser.envs["TF_USE_LEGACY_KERAS"] == "1"
    tag, _ = IMAGES[name]
    documented = [c for c in values(name, "COMMENT") if c.startswith("docker build ")]
    assert documented and f"-t {tag} " in documented[0], (name, documented)
    assert f"-f {name}" in documented[0] or name == "Dockerfile"


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_copies_existing_files_and_everything_pyproject_installs(name):
    sources = copy_sources(name)
    for source in sources:
        assert (ROOT / source).exists(), f"{name} copies {source}, which is not in the repository"
        assert not dockerignored(source), f"{name} copies {source}, which .dockerignore keeps out of the context"
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert set(packages + ["pyproject.toml", PYPROJECT["project"]["readme"]]) <= set(sources)
    _, installed = IMAGES[name]
    (install,) = [v for v in values(name, "RUN") if " pip install " in f" {v} "]
    words = shlex.split(install)
    assert words[words.index("pip") + 1:] == ["install", installed]  # the project itself, not an editable link
    extra = re.fullmatch(r"\.\[(\w+)\]", installed)
    if extra:
        assert PYPROJECT["project"]["optional-dependencies"][extra[1]] == ["tensorflow[and-cuda]==2.21.*"]


@pytest.mark.parametrize("name", IMAGES)
def test_the_image_runs_as_the_pods_user_and_starts_a_real_entry_point(name):
    user = values(name, "USER")[-1]
    assert user == f"{UID}:{UID}"  # numeric and not root: pipeline.k8s pods run as it (runAsNonRoot)
    assert values(name, "WORKDIR")[-1] not in ("/", "/root")
    command = json.loads(values(name, "CMD")[-1])  # exec form
    assert command[:2] == ["python", "-m"]
    module = command[2]
    assert module.split(".")[0] + "*" in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    path = ROOT.joinpath(*module.split("."))
    main = path / "__main__.py" if path.is_dir() else path.with_suffix(".py")
    assert main.is_file() and (path.is_dir() or 'if __name__ == "__main__":' in main.read_text()), module


def test_the_two_images_differ_only_in_what_pip_installs():
    def steps(name):
        return [(kind, value) for kind, value in instructions(name) if kind != "COMMENT" and "pip install" not in value]
    assert steps("Dockerfile") == steps("Dockerfile.gpu")


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    for path in (".venv/bin/python", "runs/latest/manifest.json", "model_repository/digits/1/saved_model.pb",
                 "pipeline/__pycache__/run.cpython-311.pyc", "__pycache__/x.pyc", ".git/HEAD", "maas.egg-info/PKG-INFO",
                 ".pytest_cache/README.md"):
        assert dockerignored(path), path
    for path in ("pipeline/run.py", "pipeline/configs/digits.yaml", "serving/core.py", "pyproject.toml"):
        assert not dockerignored(path), path
