"""`python -m pipeline.monitor COMMAND`: what the served model was asked, against what it learnt from.

    drift  --logs PREFIX [--model NAME] [--version V] [--out DIR] [key=value ...]
           each feature of the logged requests against the training statistics the version ships (TFDV's
           measures and meanings); writes DIR/drift.json, DIR/drift.html and both statistics protos
    export --logs PREFIX --out FILE.csv [--model NAME] [--version V]
           the logged rows in the columns the model was trained on, an empty label column to fill in, then
           train on them: python -m pipeline.run data.source=FILE.csv train.init_from=label:stable

PREFIX is a log collector's filename_prefix (the server writes PREFIX-*). --model defaults to the one model of the
newest log file; --version (a number or a label) to the newest version answering in that file. Thresholds come from the
`monitor` section of the config the version was trained with; key=value overrides it (monitor.numeric_threshold=0.2).
Exit codes: 0 nothing drifted (export: written); 3 a feature drifted; 1 nothing usable in the logs, or the version
has no training statistics; 2 bad input (a flag, a model or version that does not exist).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import repository
from pipeline.artifacts import SHIPPED_SCHEMA, SHIPPED_TRAIN_STATISTICS
from pipeline.config import load_config, section_from_dict
from pipeline.errors import CommandLineError, PipelineError
from pipeline.monitor import drift, export
from pipeline.monitor.logs import LogReader, log_files
from pipeline.monitor.statistics import DatasetCounts, read_list
from pipeline.registry import DB_NAME, Registry
from pipeline.specs import DataConfig, MonitorConfig

DRIFTED = 3
NO_SCHEMA = {"kind": "numeric", "features": []}  # to read only which models and versions records are of


class NothingUsable(PipelineError):
    """The logs hold nothing to compare or export (exit 1)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.monitor", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help in (("drift", "logged requests against the training statistics"),
                       ("export", "logged requests as a CSV to label and train on")):
        command = commands.add_parser(name, help=help)
        command.add_argument("--logs", required=True, metavar="PREFIX", help="the log collector's filename_prefix")
        command.add_argument("--repository", help="the model repository (default: push.repository of --config)")
        command.add_argument("--config", help="a pipeline config name or YAML path (default: the version's own)")
        command.add_argument("--model", help="the model name (default: the one model the logs hold)")
        command.add_argument("--version", help="a version number or label (default: the newest that answered)")
        if name == "drift":
            command.add_argument("--out", default="drift", help="where drift.json and drift.html go (default: drift)")
            command.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. monitor.numeric_threshold=0.2")
        else:
            command.add_argument("--out", required=True, metavar="FILE.csv", help="the CSV to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as e:
        print(f"monitor: {e}", file=sys.stderr)
        return e.exit_code


def say(problem: str) -> None:
    print(f"monitor: {problem}", file=sys.stderr)


class Served:
    """The model version the logs are compared with or exported for, and what it ships."""

    def __init__(self, args):
        files = log_files(args.logs)
        if not files:
            raise NothingUsable(f"no log files match {args.logs}-* (the filename_prefix of the model's "
                                f"logging_config); nothing to read.")
        self.root = Path(args.repository or load_config(args.config).push.repository)
        newest = set() if args.model and args.version else LogReader(args.logs, "", NO_SCHEMA, lambda _: None).newest()
        self.name = args.model or _only_model(args.logs, newest)
        model_dir = self.root / self.name
        on_disk = repository.versions(model_dir)
        if not on_disk:
            raise CommandLineError(f"no versions of model {self.name!r} in {model_dir}; --repository names the "
                                   f"repository the model was served from.")
        self.version = self._version(args.version, on_disk, args.logs, newest)
        self.path = on_disk[self.version]
        schema = self.path / SHIPPED_SCHEMA
        if not schema.is_file():
            raise NothingUsable(f"version {self.version} of {self.name!r} has no {SHIPPED_SCHEMA} (it was not made "
                                f"by this pipeline's export); its inputs cannot be read as training columns.")
        self.schema = json.loads(schema.read_text())
        if self.schema["kind"] == "image":
            raise NothingUsable(f"{self.name!r} takes images: the monitor compares and exports numbers, categories "
                                f"and text; decoded image pixels are not compared.")
        self.lineage = repository.lineage(self.path)

    def _version(self, asked: str | None, on_disk: dict, prefix: str, newest: set[tuple[str, int]]) -> int:
        if asked is None:  # the newest that answers in the newest file
            answered = [v for model, v in newest if model == self.name]
            if not answered:
                raise NothingUsable(f"the newest log file at {prefix}-* holds no request to {self.name!r}; name its "
                                    f"version with --version.")
            if max(answered) not in on_disk:
                raise CommandLineError(f"version {max(answered)} of {self.name!r}, which answered the logged "
                                       f"requests, is not in {self.root / self.name} (versions there: "
                                       f"{sorted(on_disk)}); name one with --version.")
            return max(answered)
        if repository.version_number(asked) is None:  # a label: the registry knows it
            with Registry(self.root, read_only=True) as registry:
                return registry.resolve(self.name, asked)
        if int(asked) not in on_disk:
            raise CommandLineError(f"version {asked} of {self.name!r} is not in {self.root / self.name}; versions "
                                   f"there: {sorted(on_disk)}.")
        return int(asked)

    def monitor(self, config: str | None, overrides: list[str]) -> MonitorConfig:
        """The `monitor` section of the config the version was trained with (or of `config`), with `overrides`."""
        if config:
            return load_config(config, overrides).monitor
        return section_from_dict("monitor", self.lineage.get("config", {}), overrides,
                                 f"the config version {self.version} was trained with, and the command line")

    def init_from(self) -> str:
        """What train.init_from names the served version by: its `stable` label when it has it, else its number."""
        if (self.root / DB_NAME).is_file():
            with Registry(self.root, read_only=True) as registry:
                if registry.labels(self.name).get("stable") == self.version:
                    return "label:stable"
        return str(self.version)

    def label(self, config: str | None) -> str:
        """The label column of the data the version was trained on."""
        return load_config(config).data.label if config else self.lineage.get("config", {}).get("data", {}).get(
            "label", DataConfig.label)


def _only_model(prefix: str, newest: set[tuple[str, int]]) -> str:
    """The one model the newest log file is of."""
    names = {model for model, _ in newest}
    if len(names) != 1:
        raise CommandLineError(f"the logs at {prefix}-* hold models {sorted(names) or 'none'}: name one with --model.")
    return names.pop()


def run_drift(args) -> int:
    served = Served(args)
    statistics = served.path / SHIPPED_TRAIN_STATISTICS
    if not statistics.is_file():
        raise NothingUsable(f"version {served.version} of {served.name!r} ships no training statistics "
                            f"({SHIPPED_TRAIN_STATISTICS}: made elsewhere, or before the monitor existed); "
                            f"re-export it with this pipeline to compare its traffic.")
    monitor = served.monitor(args.config, args.overrides)
    training = read_list(statistics).datasets[0]
    counts = DatasetCounts.like(served.schema, training)
    reader = LogReader(args.logs, served.name, served.schema, say)
    for rows in reader.rows(served.version):
        counts.add(rows.inputs)
    _check_usable(reader, served, counts.examples)
    if counts.examples < monitor.min_rows:
        say(f"only {counts.examples} logged rows (monitor.min_rows={monitor.min_rows}): the distances below are "
            f"mostly sampling noise")
    serving = counts.statistics("serving")
    features = drift.compare(training, serving, monitor)
    summary = {"model": served.name, "version": served.version, "rows": counts.examples, "logs": _logs(reader)}
    out = Path(args.out)
    drift.write(out, summary, features, training, serving)
    drifted = [f.feature for f in features if f.drifted]
    print(f"monitor: {counts.examples} logged rows of {served.name!r} version {served.version} against its training "
          f"statistics ({len(features)} features)")
    print(drift.table(features))
    print(f"monitor: {len(drifted)} feature(s) drifted: {', '.join(drifted)}" if drifted else
          "monitor: no feature drifted")
    print(f"monitor: wrote {out / 'drift.json'} and {out / 'drift.html'}")
    return DRIFTED if drifted else 0


def run_export(args) -> int:
    served = Served(args)
    label = served.label(args.config)
    reader = LogReader(args.logs, served.name, served.schema, say)
    version = served.version if args.version else None  # all versions' rows unless one is asked for
    out = Path(args.out)
    written = export.write_csv(out, served.schema, label, reader.rows(version))
    _check_usable(reader, served, written)
    print(f"monitor: wrote {written} logged rows of {served.name!r} to {out}; fill in its {label!r} column, then "
          f"continue training from the served version on it, with the config it was trained with:\n"
          f"  python -m pipeline.run --config CONFIG data.source={out} push.model_name={served.name} "
          f"train.init_from={served.init_from()}")
    return 0


def _check_usable(reader: LogReader, served: Served, rows: int) -> None:
    if rows:
        return
    held = ", ".join(f"version {v}: {n} rows" for v, n in sorted(reader.tally.by_version.items()))
    raise NothingUsable(f"none of the {reader.tally.records} records in {reader.tally.files} log file(s) is a usable "
                        f"request to {served.name!r} version {served.version}" + (f" (the logs hold {held})" if held
                                                                                   else "") + ".")


def _logs(reader: LogReader) -> dict:
    tally = reader.tally
    return {"files": tally.files, "records": tally.records, "rows_by_version": dict(tally.by_version),
            "other_models": dict(tally.other_models), "unusable": dict(tally.unusable)}


COMMANDS = {"drift": run_drift, "export": run_export}

if __name__ == "__main__":
    sys.exit(main())
