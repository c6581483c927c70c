"""`python -m pipeline.k8s train [key.sub=value ...]`: print Kubernetes YAML that runs the train stage on a cluster.

`--kind job` (default): a headless Service and an Indexed Job; `--kind tfjob`: a Kubeflow TFJob.
What each manifest holds is described in pipeline/training/manifests.py.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.training.manifests import KINDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.k8s", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["train"], help="the stage to run on the cluster")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.workers=4")
    parser.add_argument("--kind", choices=sorted(KINDS), default="job", help="Indexed Job (default) or Kubeflow TFJob")
    parser.add_argument("--config", help="a config name in pipeline/configs (default: digits) or a YAML path")
    parser.add_argument("--name", default="maas-train", help="the Job's (and Service's) name")
    parser.add_argument("--image", default="maas:latest", help="a container image holding this project")
    parser.add_argument("--runs-claim", default="maas-runs", help="a PersistentVolumeClaim mounted at /runs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    overrides = args.overrides
    if not any(o.startswith("train.strategy=") for o in overrides):
        overrides = ["train.strategy=multi_worker", *overrides]
    pod_args = [f"--config={args.config}", *overrides] if args.config else overrides
    try:
        cfg = load_config(args.config, overrides)
        documents = KINDS[args.kind](cfg, pod_args, args.name, args.image, args.runs_claim)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 2
    print(yaml.safe_dump_all(documents, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
