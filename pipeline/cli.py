"""`python -m pipeline.run [--config digits] [key.sub=value ...]`: run the pipeline.

The command line, a thin layer over pipeline.api: it parses flags, picks how progress is shown and prints the
outcome. `main(argv)` is the whole command, callable in-process; pipeline/run.py is its `python -m` entry point.
Exit codes: 0 success, 1 a stage failed (which, why, where its partial logs are), 2 bad config
or command line (every problem listed), 128 + N stopped by signal N (SIGTERM: 143, Ctrl-C: 130).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import repository
from pipeline import api
from pipeline.artifacts import SAMPLE_REQUEST
from pipeline.cleanup import collect_garbage
from pipeline.config import load_config
from pipeline.errors import CommandLineError, Interrupted, PipelineError, StageFailed
from pipeline.metrics import format_metrics
from pipeline.progress import LineReporter, LiveReporter, SilentReporter
from pipeline.stages import STAGES

COMMAND_LINE = "the command line"  # where a config error says the overrides came from
EXAMPLES = """\
stages, in order:
{stages}

main keys (all of them: README's configuration reference):
  data.source         digits, or a .csv / .npz file         model.name   cnn | mlp | rnn | recommender
  train.epochs        passes over the training split        train.strategy  default | mirrored | multi_worker | ...
  compress.variants   [pruned, qat, pqat, cluster, distilled], or [] for none
  push.repository     where versions are published          push.model_name  default: named after data.source

examples:
  python -m pipeline.run                                       # digits, end to end
  python -m pipeline.run train.epochs=5 model.name=mlp         # overrides, type-checked
  python -m pipeline.run data.source=my.csv data.input_shape=[] model.name=mlp "compress.variants=[]"
  python -m pipeline.run --list                                # which stages are cached
  python -m pipeline.run --until train                         # stop after a stage
  python -m pipeline.run --resume RUN_ID                       # continue a run that stopped
  python -m pipeline.run --json > summary.json                 # machine-readable summary on stdout
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    stages = "\n".join(textwrap.fill(first_sentence(module.__doc__ or ""), width=110, initial_indent=f"  {name:<15} ",
                                      subsequent_indent=" " * 18) for name, module in STAGES.items())
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0],
                                     epilog=EXAMPLES.format(stages=stages),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--quiet", action="store_true", help="print only errors and where the results are")
    shown.add_argument("--json", action="store_true", help="print a JSON summary on stdout (progress on stderr)")
    return parser.parse_intermixed_args(argv)  # overrides before or after the options


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, however its lines are broken."""
    words = " ".join(text.split())
    end = words.find(". ")
    return words if end < 0 else words[:end + 1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        output_dir = _resume_output_dir(args) if args.resume else None
        if args.gc:
            directory = output_dir or load_config(args.config, args.overrides).output_dir
            removed = collect_garbage(Path(directory), args.keep)
            print(f"{directory}: removed {removed['runs_removed']} runs and {removed['entries_removed']} cache "
                  f"entries, {removed['bytes_freed'] / 2**20:.1f} MiB")
            return 0
        if args.list:
            for name, state in api.plan(args.config, args.overrides, args.until, args.force, args.resume, output_dir,
                                        COMMAND_LINE):
                print(f"{name:<15} {state}")
            return 0
        with _display(args) as (reporter, stage_output):
            if args.resume:
                result = api.resume(args.resume, output_dir, args.until, args.force, reporter, stage_output)
            else:
                result = api.run(args.config, args.overrides, args.until, args.force, reporter, stage_output,
                                 COMMAND_LINE)
    except PipelineError as e:
        print(f"\n{e}" if isinstance(e, StageFailed) else e, file=sys.stderr)
        if isinstance(e, StageFailed) and not e.expected:
            print("The traceback is at the end of log.txt there.", file=sys.stderr)
        return e.exit_code
    except Interrupted as e:
        print(f"\nRun {e.run_id} {e}; nothing half-written was kept. Continue it with --resume {e.run_id}",
              file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(summary(result), indent=2))
    elif args.quiet:
        print(f"Run {result.run_id}: {result.status}; report {result.report}")
    else:
        print_summary(result)
    return 0


def _resume_output_dir(args) -> str | None:
    """--resume takes no overrides but output_dir=, which says where to look for the run."""
    output_dirs = [o.partition("=")[2] for o in args.overrides if o.startswith("output_dir=")]
    if args.config or len(output_dirs) != len(args.overrides):
        raise CommandLineError("--resume reuses the run's saved config; drop the overrides (output_dir= may stay: "
                               "it says where to look for the run).")
    return output_dirs[-1] if output_dirs else None


@contextlib.contextmanager
def _display(args):
    """(reporter, where stage output goes): live bars on a terminal, lines elsewhere, none with --quiet."""
    if args.json:
        yield LineReporter(sys.stderr), sys.stderr
    elif args.quiet:
        yield SilentReporter(), None
    elif sys.stdout.isatty():
        with LiveReporter() as live:
            yield live, "stdout"
    else:
        yield LineReporter(), "stdout"


def summary(result: api.RunResult) -> dict:
    return {"run_id": result.run_id, "status": result.status, "report": str(result.report),
            "model_path": result.model_path and str(result.model_path), "version": result.version,
            "stages": {name: asdict(record) for name, record in result.stages.items()}}


def print_summary(result: api.RunResult) -> None:
    print(f"\n{'stage':<15} {'status':<8} {'time':>8}  metrics")
    for r in result.stages.values():
        print(f"{r.name:<15} {r.status:<8} {r.wall_s:>7.1f}s  {format_metrics(r.metrics)}")
    print(f"\nRun {result.run_id}: report {result.report.resolve()}")
    if result.model_path is not None:
        print_serving(result)


def print_serving(result: api.RunResult) -> None:
    """Where the model went and commands that serve and query it, as they can be typed here: this interpreter,
    and a test row with its true label."""
    base, name = result.model_path.parent, result.model_path.parent.name
    newest = repository.latest(base)
    published = "published" if result.stages["push"].metrics.get("published", True) else "already published"
    print(f"Model: {result.model_path} (version {result.version}, {published}; TF Serving layout)")
    if newest is not None and newest != result.version:
        print(f"Note: version {newest} of {name!r} is newer; a server of {base} serves it, not version "
              f"{result.version} (label this one to serve it: python -m pipeline.registry label {name} stable "
              f"{result.version}, then serve the registry's models.config).")
    print(f"Serve it:  {shlex.quote(sys.executable)} -m serving --rest_api_port=8501 --model_name={name} "
          f"--model_base_path={base.resolve()}")
    label = result.stages["export"].metrics.get("sample_label")
    print(f"Query it:  curl -d @{SAMPLE_REQUEST.of_run(result.run_dir)} http://localhost:8501/v1/models/{name}:predict"
          + (f"   # a test row; its true label: {label}" if label is not None else ""))
