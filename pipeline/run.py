"""`python -m pipeline.run [--config digits] [key.sub=value ...]`: run the pipeline.

Exit codes: 0 success, 1 a stage failed (which, why, where its partial logs are), 2 bad config
or command line (every problem listed), 128 + N stopped by signal N (SIGTERM: 143, Ctrl-C: 130).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pipeline.artifacts import SAMPLE_REQUEST
from pipeline.config import config_from_dict, load_config
from pipeline.cleanup import collect_garbage
from pipeline.errors import CommandLineError, Interrupted, PipelineError, StageFailed
from pipeline.report import write_report
from pipeline.runner import MANIFEST, Runner, StageRecord, format_metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=5")
    parser.add_argument("--config", help="a config name in pipeline/configs (default: digits) or a YAML path")
    parser.add_argument("--resume", metavar="RUN", help="continue that run (its id, or its directory) after its "
                        "last completed stage; with output_dir=DIR when it was made with that override")
    parser.add_argument("--force", metavar="STAGE", action="append", default=[], help="re-run STAGE even if cached")
    parser.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    parser.add_argument("--list", action="store_true", help="list the stages and whether each is cached, then exit")
    parser.add_argument("--gc", action="store_true", help="remove all but the newest --keep runs and the cache "
                        "entries only they used (never published models), then exit")
    parser.add_argument("--keep", type=int, default=5, metavar="N", help="runs --gc keeps (default 5)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.resume:
            cfg = _resumed_config(args.resume, args.config, args.overrides)
        else:
            cfg = load_config(args.config, args.overrides)
        if args.gc:
            removed = collect_garbage(Path(cfg.output_dir), args.keep)
            print(f"{cfg.output_dir}: removed {removed['runs_removed']} runs and {removed['entries_removed']} cache "
                  f"entries, {removed['bytes_freed'] / 2**20:.1f} MiB")
            return 0
        runner = Runner(cfg, run_id=args.resume and Path(args.resume).name, force=tuple(args.force))
        if args.list:
            for name, state in runner.plan(args.until):
                print(f"{name:<10} {state}")
            return 0
        records = runner.run(args.until)
    except PipelineError as e:
        print(f"\n{e}" if isinstance(e, StageFailed) else e, file=sys.stderr)
        if isinstance(e, StageFailed) and not e.expected:
            print("The traceback is at the end of log.txt there.", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"\nRun {runner.run_id} {e}; nothing half-written was kept. Continue it with --resume {runner.run_id}",
              file=sys.stderr)
        return e.exit_code
    print_summary(records)
    report = write_report(runner.run_dir, records)
    print(f"\nRun {runner.run_id}: report {report.resolve()}")
    if "push" in runner.records:
        print_how_to_query(runner.records["push"], runner.run_dir)
    return 0


def _resumed_config(run: str, config: str | None, overrides: list[str]):
    """The saved config of `run`: a run directory, or a run id under `output_dir` (an `output_dir=` override,
    else the default config's)."""
    output_dirs = [o.partition("=")[2] for o in overrides if o.startswith("output_dir=")]
    if config or len(output_dirs) != len(overrides):
        raise CommandLineError("--resume reuses the run's saved config; drop the overrides (output_dir= may stay: "
                               "it says where to look for the run).")
    places = [Path(run), *(Path(d) / run for d in output_dirs), Path(load_config().output_dir) / run]
    for place in places:
        saved = place / "config.json"
        if (place / MANIFEST).is_file() and saved.is_file():
            cfg = config_from_dict(json.loads(saved.read_text()), str(saved))
            return dataclasses.replace(cfg, output_dir=str(place.parent))
    raise CommandLineError(f"--resume {run!r}: no run with a manifest in {', '.join(map(str, places))}; give the "
                           f"run's directory, or its id with the output_dir=DIR it was made with.")


def print_summary(records: list[StageRecord]) -> None:
    print(f"\n{'stage':<10} {'status':<8} {'time':>8}  metrics")
    for r in records:
        print(f"{r.name:<10} {r.status:<8} {r.wall_s:>7.1f}s  {format_metrics(r.metrics)}")


def print_how_to_query(push: StageRecord, run_dir: Path) -> None:
    path = Path(push.metrics["path"])
    name = path.parent.name
    print(f"Model: {path} (version {push.metrics['version']}, TF Serving layout)")
    print(f"Serve it:  python -m serving --rest_api_port=8501 --model_name={name} "
          f"--model_base_path={path.parent.resolve()}")
    print(f"Query it:  curl -d @{SAMPLE_REQUEST.of_run(run_dir)} "
          f"http://localhost:8501/v1/models/{name}:predict")


if __name__ == "__main__":
    sys.exit(main())
