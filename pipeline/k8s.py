"""`python -m pipeline.k8s train [options] [key.sub=value ...]`: print the Kubernetes YAML of a pipeline run.

On the cluster the pipeline trains distributed and pushes the model into the repository on the runs volume.

`--kind job` (default): a PersistentVolumeClaim, a headless Service and an Indexed Job; `--kind tfjob`: the
claim and a Kubeflow TFJob. What each manifest holds is described in pipeline/k8s_manifests.py.
Options and overrides may come in any order. Bad input is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import PurePosixPath

import yaml

from pipeline.config import CONFIG_DIR, load_config, resolve_config_path
from pipeline.errors import CommandLineError, ConfigError
from pipeline.k8s_manifests import KINDS, MOUNT, Pods, runs_claim

IMAGE = "maas-pipeline:latest"  # what Dockerfile documents building
GPU_IMAGE = "maas-pipeline:latest-gpu"  # Dockerfile.gpu; the default with --gpus
REPOSITORY = f"{MOUNT}/model_repository"
LOCAL_STRATEGIES = ("default", "mirrored")
QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?([KMGTPE]i|[kMGTPE])?")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are raised, so that each is one line on stderr and stdout stays empty
    (it is often piped into `kubectl apply -f -`)."""

    def error(self, message: str):
        raise CommandLineError(f"{message}. See --help.")


def _quantity(text: str) -> str:
    if not QUANTITY.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected a Kubernetes quantity like 20Gi or 500Mi, received {text!r}")
    return text


def _gpus(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of GPUs per training pod, received {text!r}")
    return int(text)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pipeline.k8s", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["train"], help="the stage that runs distributed (the pipeline runs to push)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.workers=4")
    parser.add_argument("--kind", choices=sorted(KINDS), default="job", help="Indexed Job (default) or Kubeflow TFJob")
    parser.add_argument("--config", help="a config name in pipeline/configs, which the image holds (default: digits)")
    parser.add_argument("--name", default="maas-train", help="the Job's (and Service's) name")
    parser.add_argument("--image", help=f"the pipeline image (default: {IMAGE}, or {GPU_IMAGE} with --gpus)")
    parser.add_argument("--gpus", type=_gpus, default=0, metavar="N", help="nvidia.com/gpu limit of each pod that "
                        "trains (default: 0)")
    parser.add_argument("--runs-claim", default="maas-runs", help=f"the PersistentVolumeClaim mounted at {MOUNT}: "
                        f"runs and the model repository ({REPOSITORY})")
    parser.add_argument("--no-pvc", action="store_true", help="do not emit the claim: --runs-claim exists already")
    parser.add_argument("--storage", type=_quantity, default="10Gi", help="the claim's size (default: 10Gi)")
    parser.add_argument("--storage-class", help="the claim's storage class (default: the cluster's default)")
    parser.add_argument("--access-mode", choices=["ReadWriteMany", "ReadWriteOnce"], default="ReadWriteMany",
                        help="ReadWriteMany (default) lets pods on several nodes share the claim; ReadWriteOnce "
                        "keeps them on one node")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    try:
        args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
        config = _bundled_config(args.config)
        overrides = _cluster_overrides(config, args.overrides)
        cfg = load_config(config, overrides)
        _check_on_volume({"push.repository": cfg.push.repository, "train.backup_dir": cfg.train.backup_dir})
        pods = Pods(args.name, args.image or (GPU_IMAGE if args.gpus else IMAGE), args.runs_claim, args.gpus)
        pod_args = [f"--config={config}", *overrides] if config else overrides
        documents = [] if args.no_pvc else [runs_claim(args.runs_claim, args.storage, args.storage_class,
                                                       args.access_mode)]
        documents += KINDS[args.kind](cfg, pod_args, pods)
    except CommandLineError as e:
        print(f"{parser.prog}: error: {e.args[0]}", file=sys.stderr)
        return 2
    except ConfigError as e:
        for problem in e.problems:
            print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    print(yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=1000), end="")
    return 0


def _bundled_config(config: str | None) -> str | None:
    """The config's name: pods read it from the image, which holds pipeline/configs only."""
    if config is None:
        return None
    path = resolve_config_path(config)
    if path.parent.resolve() != CONFIG_DIR.resolve() or not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise CommandLineError(f"--config {config}: pods read their config from the image, which holds only "
                               f"pipeline/configs ({names}); add yours there and rebuild the image, or use overrides.")
    return path.stem


def _cluster_overrides(config: str | None, overrides: list[str]) -> list[str]:
    """The user's overrides after the cluster's defaults: multi_worker unless the config names a cluster
    strategy, and the model repository on the runs volume. output_dir is set per pod."""
    if any(o.partition("=")[0] == "output_dir" for o in overrides):
        raise CommandLineError(f"output_dir: each pod writes under {MOUNT}/<pod name>, set by pipeline.k8s; "
                               f"drop the output_dir= override.")
    defaults = [f"push.repository={REPOSITORY}"]
    if load_config(config, overrides).train.strategy in LOCAL_STRATEGIES:  # an explicit one still wins
        defaults.insert(0, "train.strategy=multi_worker")
    return [*defaults, *overrides]


def _check_on_volume(paths: dict[str, str]) -> None:
    """What must outlive a pod (the published models, training backups) has to be on the runs volume."""
    for key, path in paths.items():
        if path and not PurePosixPath(path).is_relative_to(MOUNT):
            raise CommandLineError(f"{key}={path}: pods keep only what is on the runs volume, mounted at {MOUNT}; "
                                   f"use a path under it (the model repository's default: {REPOSITORY}).")


class _Dumper(yaml.SafeDumper):
    """YAML with multi-line strings (the pod script) as readable `|` blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


if __name__ == "__main__":
    sys.exit(main())
