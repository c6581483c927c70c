"""`python -m pipeline.registry COMMAND`: the published versions, their labels, promote and roll back.

    list [MODEL]                          versions: created, accuracy (or MAE), size, labels, run
    show MODEL VERSION|LABEL              one version's whole record
    label MODEL LABEL VERSION             point a label (stable, canary, any name) at a version
    promote MODEL [--from canary] [--to stable]     move --to to where --from points
    rollback MODEL [--label stable]       move a label back to where it pointed before its last change
    gc MODEL --keep K --server H:P|--no-server   delete old versions, never a labelled, configured or served one
    logging MODEL --filename-prefix P [--sampling-rate R] | --off   log MODEL's requests (models.config's
                                          logging_config: our server writes PredictionLog TFRecords P-*)
    diff MODEL A B                        metrics and config of two versions (numbers or labels)

Label changes rewrite <repository>/models.config and, with --server HOST:PORT (gRPC; ours or
tensorflow_model_server), are applied to that running server and waited for (the target version
AVAILABLE, then the label answering with it) before the command reports success. If the server refuses,
nothing changes: not the registry, not models.config, not the server's labels.
Exit codes: 0 done; 1 the change could not be made (server, locked database); 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.errors import CommandLineError, PipelineError
from pipeline.registry import CONFIG_NAME, Registry, RegistryError, rollout


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.registry", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    everywhere = argparse.ArgumentParser(add_help=False)  # given before the command or after it
    for parent, default in ((parser, None), (everywhere, argparse.SUPPRESS)):  # SUPPRESS: a command's parser
        parent.add_argument("--repository", default=default,                  # keeps a value given before it
                            help="the model repository (default: push.repository of --config)")
        parent.add_argument("--config", default=default,
                            help="a pipeline config name or YAML path, for the default --repository")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, parents=[everywhere])

    listing = command("list", "the versions of every model, or of one")
    listing.add_argument("model", nargs="?")
    show = command("show", "one version's record")
    show.add_argument("model")
    show.add_argument("version", help="a version number or a label")
    diff = command("diff", "compare two versions")
    diff.add_argument("model")
    diff.add_argument("a")
    diff.add_argument("b")
    label = command("label", "point a label at a version")
    label.add_argument("model")
    label.add_argument("label")
    label.add_argument("version")
    promote = command("promote", "move one label to where another points")
    promote.add_argument("model")
    promote.add_argument("--from", dest="source", default="canary")
    promote.add_argument("--to", dest="target", default="stable")
    rollback = command("rollback", "move a label back to its previous version")
    rollback.add_argument("model")
    rollback.add_argument("--label", default="stable")
    gc = command("gc", "delete old versions")
    gc.add_argument("model")
    gc.add_argument("--keep", type=int, required=True,
                    help="newest versions to keep (labelled ones, those models.config names and served ones stay)")
    gc.add_argument("--no-server", action="store_true",
                    help="no server serves this repository: delete without asking one (else --server is required)")
    logging = command("logging", "log a model's requests, or stop (models.config's logging_config)")
    logging.add_argument("model")
    where = logging.add_mutually_exclusive_group(required=True)
    where.add_argument("--filename-prefix", help="log files are PREFIX-* (a path, made absolute here)")
    where.add_argument("--off", action="store_true", help="stop logging this model's requests")
    logging.add_argument("--sampling-rate", type=float, default=1.0, help="the share of requests logged (0 to 1)")
    for command in (label, promote, rollback, gc, logging):
        command.add_argument("--server", help="HOST:PORT of a running server's gRPC API to apply the change to")
        command.add_argument("--base-path-root", help="the repository's path as that server sees it (e.g. /models)")
        command.add_argument("--timeout-s", type=float, default=120.0, help="for the server to load and relabel")
        command.add_argument("--token-file", help="a file holding an admin token of that server's --auth_token_file")
        command.add_argument("--ca-cert", help="PEM file of the CA that signed that server's TLS certificate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with Registry(args.repository or _default_repository(args.config), create=False) as registry:
            COMMANDS[args.command](registry, args)
    except PipelineError as e:
        print(f"registry: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _default_repository(config: str | None) -> str:
    from pipeline.config import load_config

    return load_config(config).push.repository


def list_versions(registry: Registry, args) -> None:
    if args.model:
        registry.check_model(args.model)
    rows = registry.versions(args.model)
    header = f"{'model':<16} {'version':>7}  {'created':<24} {'quality':>14} {'size':>10}  {'labels':<16} run"
    print(header)
    for r in rows:
        print(f"{r['model']:<16} {r['version']:>7}  {r['created']:<24} {_quality(r['metrics']):>14} "
              f"{_size(r['saved_model_bytes']):>10}  {','.join(r['labels']) or '-':<16} {r['run_id'] or '-'}")


def _quality(metrics: dict) -> str:
    if "accuracy" in metrics:
        return f"acc {metrics['accuracy']:.4f}"
    if "mae" in metrics:
        return f"mae {metrics['mae']:.4g}"
    return "-"


def _size(size: int | None) -> str:
    return "-" if size is None else f"{size / 2**20:.1f} MiB"


def show(registry: Registry, args) -> None:
    print(json.dumps(registry.get(args.model, args.version), indent=2))


def diff(registry: Registry, args) -> None:
    """Two versions side by side, whole values, each line that differs marked with a `*`."""
    a, b = registry.get(args.model, args.a), registry.get(args.model, args.b)
    rows = [(key, a.get(key), b.get(key)) for key in ("created", "run_id", "variant", "data_fingerprint",
                                                       "saved_model_bytes")]
    for section in ("metrics", "trained_metrics", "infra_validation", "data_origin"):
        rows += [(f"{section}.{key}", a[section].get(key), b[section].get(key))
                 for key in sorted(a[section].keys() | b[section].keys())]
    flat_a, flat_b = _flatten(a["config"]), _flatten(b["config"])
    changed = sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))
    config = [(key, flat_a.get(key), flat_b.get(key)) for key in changed]
    header = ("", f"version {a['version']}", f"version {b['version']}")
    texts = [(key, _text(x), _text(y)) for key, x, y in [*rows, *config]]
    widths = [max(len(row[i]) for row in [header, *texts]) for i in range(3)]

    def line(key: str, x: str, y: str) -> str:
        return f"{'*' if x != y else ' '} {key:<{widths[0]}}  {x:<{widths[1]}}  {y}"

    print(f"  {'':<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]}")
    for row in texts[:len(rows)]:
        print(line(*row))
    print(f"\nconfig: {len(changed)} key(s) differ" + (":" if changed else ""))
    for row in texts[len(rows):]:
        print(line(*row))


def _text(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def label(registry: Registry, args) -> None:
    change_label(registry, args, args.model, args.label, registry.resolve(args.model, args.version), "label")


def promote(registry: Registry, args) -> None:
    labels = registry.labels(args.model)
    if args.source not in labels:
        registry.resolve(args.model, f"label:{args.source}")  # raises: names the labels there are
    change_label(registry, args, args.model, args.target, labels[args.source], f"promote from {args.source}")


def rollback(registry: Registry, args) -> None:
    history = registry.history(args.model, args.label)
    if not history or history[-1]["previous"] is None:
        raise RegistryError(f"label {args.label!r} of {args.model!r} has no earlier version to go back to "
                            f"(its history: {[h['version'] for h in history] or 'none'}).")
    previous = history[-1]["previous"]
    registry.resolve(args.model, previous)  # raises if that version was deleted since
    change_label(registry, args, args.model, args.label, previous, "rollback")


def set_logging(registry: Registry, args) -> None:
    if not 0 <= args.sampling_rate <= 1:
        raise CommandLineError(f"--sampling-rate: expected a share of requests from 0 to 1, received {args.sampling_rate}.")
    prefix = None if args.off else str(Path(args.filename_prefix).resolve())  # a server may run elsewhere
    logging = registry.logging_changed(args.model, prefix, args.sampling_rate)
    if args.server:
        rollout.reload(args.server, registry.models_config(args.base_path_root, logging),
                       f"the logging of {args.model!r}", args.timeout_s, client_options(args))
    path = registry.write_models_config(logging)
    where = f", applied on {args.server}" if args.server else ""
    print(f"{args.model}: requests no longer logged{where}; {path} rewritten" if args.off else
          f"{args.model}: {args.sampling_rate:.0%} of requests logged to {prefix}-* (PredictionLog TFRecords)"
          f"{where}; {path} rewritten (tensorflow_model_server cannot log)")


def change_label(registry: Registry, args, model: str, name: str, version: int, action: str) -> None:
    """Move the label in one transaction; apply it to the server (if any) before committing, so a refusal
    leaves everything as it was; then write models.config."""
    current = registry.models_config(args.base_path_root)
    with registry.transaction():
        previous = registry.set_label(model, name, version, action)
        if args.server:
            rollout.apply(args.server, current, registry.models_config(args.base_path_root), model, name, version,
                          args.timeout_s, client_options(args))
        path = registry.write_models_config()
    where = f" and on {args.server}" if args.server else ""
    quality = _quality(registry.get(model, version)["metrics"])  # the version's own test figure
    print(f"{model}: {name} -> version {version} ({quality}; was {previous if previous is not None else 'unset'})"
          f"{where}; {path} rewritten")


def client_options(args) -> dict:
    """GrpcClient's security options from --token-file and --ca-cert (a token is read from a file, never taken
    on the command line, where other users of the machine could see it)."""
    options = {}
    if args.token_file:
        options["token"] = Path(args.token_file).read_text().strip()
    if args.ca_cert:
        options["ca_cert"] = args.ca_cert
    return options


def collect(registry: Registry, args) -> None:
    """Delete what nothing keeps: the newest --keep, labelled versions, what models.config names (servers polling it
    serve those) and, with --server, what that server serves. A server not asked may still serve a version (one
    gone from disk is served from memory, then 404s on reload): without --server, nothing is deleted unless
    --no-server says no server serves the repository. The summary names only the checks made."""
    registry.check_model(args.model)
    versions = [r["version"] for r in registry.versions(args.model)]
    keep = set(versions[: max(args.keep, 0)]) | {max(versions)} | set(registry.labels(args.model).values())
    keep |= _named_by_models_config(registry.repository, args.model, versions)
    checks = [f"newest {args.keep}", "labelled", "named by models.config"]
    if args.server:
        keep |= _served(args.server, args.model)
        checks.append(f"served by {args.server}")
    doomed = sorted(set(versions) - keep)
    if doomed and not args.server and not args.no_server:
        raise CommandLineError(f"gc would delete versions {doomed} of {args.model!r}, but no server was asked "
                               f"whether it serves them. Ask the one that serves {registry.repository}: --server "
                               f"HOST:PORT (its gRPC port); or, if none does, say so: --no-server. Nothing was deleted.")
    model_dir = registry.repository / args.model
    with registry.transaction():
        for version in doomed:
            gone = model_dir / f".deleting-{version}"
            (model_dir / str(version)).rename(gone)  # out of every poller's sight at once
            shutil.rmtree(gone)
            registry.mark_deleted(args.model, version)
    unasked = "; no server asked (--no-server)" if args.no_server and not args.server else ""
    print(f"{args.model}: deleted versions {doomed or 'none'}; kept {sorted(keep & set(versions))} "
          f"({', '.join(checks)}){unasked}")


def _named_by_models_config(repository: Path, model: str, versions: list[int]) -> set[int]:
    """The versions <repository>/models.config has servers serve: its specific versions and labels, or its newest
    num_versions (versions: newest first); none when there is no such file."""
    from serving.model_config import load_model_server_config

    path = repository / CONFIG_NAME
    if not path.is_file():
        return set()
    named = set()
    for entry in load_model_server_config(str(path)).model_config_list.config:
        if entry.name != model:
            continue
        policy = entry.model_version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            named |= set(versions)
        elif choice == "specific":
            named |= set(policy.specific.versions)
        else:  # latest, TF Serving's default: the newest num_versions (1 when unset)
            named |= set(versions[: policy.latest.num_versions or 1])
        named |= set(entry.version_labels.values())
    return named


def _served(server: str, model: str) -> set[int]:
    from serving.client import GrpcClient, ServingClientError

    with GrpcClient(server, timeout_s=10) as client:
        try:
            return {s["version"] for s in client.status(model) if s["state"] in ("AVAILABLE", "LOADING")}
        except ServingClientError as e:
            raise RegistryError(f"cannot ask {server} which versions it serves ({e.status}: {e.message}).") from None


COMMANDS = {"list": list_versions, "show": show, "diff": diff, "label": label, "promote": promote,
            "rollback": rollback, "gc": collect, "logging": set_logging}

if __name__ == "__main__":
    sys.exit(main())
