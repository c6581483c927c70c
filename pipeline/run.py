"""`python -m pipeline.run [--config digits] [key.sub=value ...]`: run the pipeline.

Exit codes: 0 success, 1 a stage failed (which, why, where its partial logs are), 2 bad config
or command line (every problem listed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.artifacts import SAMPLE_REQUEST
from pipeline.config import config_from_dict, load_config
from pipeline.errors import CommandLineError, PipelineError, StageFailed
from pipeline.report import write_report
from pipeline.runner import MANIFEST, Runner, StageRecord, format_metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=5")
    parser.add_argument("--config", help="a config name in pipeline/configs (default: digits) or a YAML path")
    parser.add_argument("--resume", metavar="RUN_ID", help="continue that run after its last completed stage")
    parser.add_argument("--force", metavar="STAGE", action="append", default=[], help="re-run STAGE even if cached")
    parser.add_argument("--until", metavar="STAGE", help="stop after STAGE")
    parser.add_argument("--list", action="store_true", help="list the stages and whether each is cached, then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.resume:
            if args.overrides or args.config:
                raise CommandLineError("--resume reuses the run's saved config; drop the overrides.")
            cfg = _resumed_config(args.resume)
        else:
            cfg = load_config(args.config, args.overrides)
        runner = Runner(cfg, run_id=args.resume, force=tuple(args.force))
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
    print_summary(records)
    report = write_report(runner.run_dir, records)
    print(f"\nRun {runner.run_id}: report {report.resolve()}")
    if "push" in runner.records:
        print_how_to_query(runner.records["push"], runner.run_dir)
    return 0


def _resumed_config(run_id: str):
    for base in (Path("runs"), Path(load_config().output_dir)):
        saved = base / run_id / "config.json"
        if (base / run_id / MANIFEST).is_file() and saved.is_file():
            return config_from_dict(json.loads(saved.read_text()), str(saved))
    raise CommandLineError(f"--resume {run_id!r}: no run with a manifest under runs/; see the run ids printed by earlier runs.")


def print_summary(records: list[StageRecord]) -> None:
    print(f"\n{'stage':<10} {'status':<8} {'time':>8}  metrics")
    for r in records:
        print(f"{r.name:<10} {r.status:<8} {r.wall_s:>7.1f}s  {format_metrics(r.metrics)}")


def print_how_to_query(push: StageRecord, run_dir: Path) -> None:
    path = Path(push.metrics["path"])
    name = path.parent.name
    print(f"Model: {path} (version {push.metrics['version']}, TF Serving layout)")
    print(f"Serve it:  make serve   (python -m serving --rest_api_port=8501 --model_name={name} "
          f"--model_base_path={path.parent})")
    print(f"Query it:  curl -d @{SAMPLE_REQUEST.of_run(run_dir)} "
          f"http://localhost:8501/v1/models/{name}:predict")


if __name__ == "__main__":
    sys.exit(main())
