"""`python -m serving.tfserving`: the production bundle for tensorflow/serving, and the batching sweep.

    python -m serving.tfserving sweep --model model_repository/digits      # -> model_repository/batching_parameters.txt
    python -m serving.tfserving build --repository model_repository --out bundle

A problem with the input (no models, a missing version, a malformed config file) is one line on stderr
and exit 2, and nothing is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from localhost import loadgen
from serving.tfserving import bundle, container, request_logging, sweep
from serving.tfserving.errors import UsageError

PROG = "python -m serving.tfserving"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="write a self-contained bundle for the tensorflow/serving image",
                                description=bundle.__doc__.splitlines()[0])
    build.add_argument("--repository", type=Path, required=True,
                       help="model repository (<name>/<version>/saved_model.pb); its models.config and "
                            "batching_parameters.txt are used when present")
    build.add_argument("--out", type=Path, required=True, help="the bundle directory to create (must not exist)")
    build.add_argument("--image-tag", default=container.tf_serving_version(),
                       help="tensorflow/serving release to build FROM (default: the installed "
                            "tensorflow-serving-api's, %(default)s)")
    build.add_argument("--name", default="maas-serving", help="image and Kubernetes object name (%(default)s)")
    build.add_argument("--gpus", type=int, default=1,
                       help="nvidia.com/gpu per Kubernetes pod; 0 deploys the CPU image (%(default)s)")
    build.add_argument("--request-logging", choices=request_logging.MODES, default="canary",
                       help="how logging/k8s/ gets requests to log (TF Serving's build cannot): canary, a pod of "
                            "maas's server in the Service; mirror, a mesh copies every request to it (%(default)s)")
    build.add_argument("--log-sampling-rate", type=float, default=1.0,
                       help="fraction of the requests it answers that the logging pod logs (%(default)s)")
    build.set_defaults(run=run_build)

    tune = commands.add_parser("sweep", help="measure batching parameters against no batching; write the best",
                               description=sweep.__doc__.splitlines()[0])
    tune.add_argument("--model", type=Path, required=True, help="a model base path (<version>/saved_model.pb)")
    tune.add_argument("--out", type=Path,
                      help="where to write the parameters (default: batching_parameters.txt beside the model, "
                           "where build looks)")
    tune.add_argument("--p99-ms", type=float, default=100.0, help="p99 latency bound that defines a knee (%(default)s)")
    tune.add_argument("--seconds", type=float, default=2.0, help="load per rate, 0.5 to 60 (%(default)s)")
    tune.add_argument("--grid", choices=sweep.GRIDS, default="small", help="candidates: small (5) or full (18)")
    tune.add_argument("--list", action="store_true", help="print the plan (candidates, output file) and exit")
    tune.set_defaults(run=run_sweep)
    return parser


def run_build(args: argparse.Namespace) -> int:
    out = bundle.build(args.repository, args.out, args.image_tag, args.name, args.gpus, args.request_logging,
                       args.log_sampling_rate)
    print(f"Wrote {out}; next: see {out / 'README.md'}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    if not 0.5 <= args.seconds <= loadgen.MAX_SECONDS:
        raise UsageError(f"--seconds {args.seconds:g}: expected 0.5 to {loadgen.MAX_SECONDS} (a bounded run).")
    if args.p99_ms <= 0:
        raise UsageError(f"--p99-ms {args.p99_ms:g}: expected a positive latency bound in milliseconds.")
    model = args.model.resolve()
    out = args.out or model.parent / container.BATCHING
    candidates = sweep.grid(args.grid, os.cpu_count() or 1)
    if args.list:
        print(f"Would measure {model} with batching off and {len(candidates)} candidates (max_batch_size, "
              f"batch_timeout_micros, num_batch_threads), {args.seconds:g} s per rate, p99 <= {args.p99_ms:g} ms:")
        print("\n".join(f"  {candidate}" for candidate in candidates))
        print(f"and write the best to {out}")
        return 0
    result = sweep.sweep(model, candidates, args.seconds, args.p99_ms)
    sweep.write(result, out)
    print("\n".join(sweep.summary(result)))
    print(f"Wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.run(args)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
