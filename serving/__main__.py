"""`python -m serving`: a drop-in for tensorflow_model_server, with its flag names and meanings.

    python -m serving --rest_api_port=8501 --model_name=digits --model_base_path=$PWD/model_repository/digits

Flags and config files are checked before anything starts: an unknown flag, a TF Serving flag
this server does not implement, or a bad config file exits 2 with the reason.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger("serving")

VERSION = "maas-serving 0.1.0 (TensorFlow Serving 2.21 API)"
UNSUPPORTED = (  # tensorflow_model_server flags this server rejects rather than silently ignores
    "grpc_socket_path", "enable_per_model_batching_parameters", "num_load_threads", "num_unload_threads",
    "flush_filesystem_caches",
    "tensorflow_session_config_file", "use_alts_credentials", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "num_request_iterations_for_warmup",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
    "enable_grpc_healthcheck_service",
)


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def build_parser() -> argparse.ArgumentParser:
    cpus = os.cpu_count() or 1
    p = argparse.ArgumentParser(prog="python -m serving", allow_abbrev=False,
                                description="TensorFlow Serving-compatible model server (REST and gRPC).")
    flag = p.add_argument
    flag("--port", type=int, default=8500, help="gRPC port (0: no gRPC server)")
    flag("--rest_api_port", type=int, default=0, help="REST port (0: no REST server)")
    flag("--rest_api_num_threads", type=int, default=4 * cpus, help="threads that run model calls without batching")
    flag("--rest_api_timeout_in_ms", type=int, default=30000, help="REST request deadline (0: none)")
    flag("--rest_api_enable_cors_support", type=parse_bool, nargs="?", const=True, default=False)
    flag("--model_name", default="default", help="the model's name, with --model_base_path")
    flag("--model_base_path", default="", help="directory of integer-named version directories")
    flag("--model_config_file", default="", help="text-format ModelServerConfig (instead of --model_name/base_path)")
    flag("--model_config_file_poll_wait_seconds", type=int, default=0, help="re-read --model_config_file this often")
    flag("--file_system_poll_wait_seconds", type=float, default=1,
         help="poll base paths for new versions (0: once; fractions of a second accepted, unlike TF Serving)")
    flag("--max_num_load_retries", type=int, default=5,
         help="retries of a version that failed to load, on later polls (none when polling only once)")
    flag("--load_retry_interval_micros", type=int, default=60_000_000,
         help="wait before the first retry of a failed load; doubled before each further one")
    flag("--enable_batching", type=parse_bool, nargs="?", const=True, default=False)
    flag("--batching_parameters_file", default="", help="text-format BatchingParameters")
    flag("--monitoring_config_file", default="", help="text-format MonitoringConfig (prometheus_config)")
    flag("--enable_model_warmup", type=parse_bool, nargs="?", const=True, default=True)
    flag("--enable_signature_method_name_check", type=parse_bool, nargs="?", const=True, default=False)
    flag("--allow_version_labels_for_unavailable_models", type=parse_bool, nargs="?", const=True, default=False,
         help="a new label (or one keeping its version) may name a version not loaded yet; needed to start with labels")
    flag("--tensorflow_intra_op_parallelism", type=int, default=0, help="TF intra-op threads")
    flag("--tensorflow_inter_op_parallelism", type=int, default=0, help="TF inter-op threads")
    flag("--tensorflow_session_parallelism", type=int, default=0,
         help="both of the above when neither is set (none set: 1 intra, 1 inter per core; benchmarks/results/threads.md)")
    flag("--grpc_channel_arguments", default="", help="comma-separated key=value gRPC server arguments")
    flag("--enable_serialization_as_tensor_content", type=parse_bool, nargs="?", const=True, default=False)
    flag("--grpc_max_threads", type=int, default=4 * cpus, help="accepted for compatibility; grpc.aio needs no pool")
    flag("--ssl_config_file", default="", help="text-format SSLConfig (PEM key, cert, client CA): TLS on both ports")
    flag("--version", action="store_true", help="print the version and exit")
    # Ours, not tensorflow_model_server's:
    flag("--host", default="0.0.0.0", help="address both servers bind (TF Serving binds all interfaces)")
    flag("--rest_api_max_body_bytes", type=int, default=256 * 2**20, help="larger REST bodies (also once decompressed) get 413")
    flag("--allow_remote_config_reload", type=parse_bool, nargs="?", const=True, default=False,
         help="accept HandleReloadConfigRequest from other machines, not only loopback (a reload loads models from "
              "any directory the server can read: trusted networks only)")
    flag("--model_base_path_root", default="", help="base paths (also in reloads) and their version directories must "
                                                    "resolve inside this directory")
    flag("--auth_token_file", default="", help="YAML of bearer tokens {id, token, role: predict|admin, models}; "
                                               "re-read on SIGHUP (see SECURITY.md)")
    flag("--auth_allow_status", type=parse_bool, nargs="?", const=True, default=False,
         help="with --auth_token_file: model status (GET /v1/models/<m>, GetModelStatus) needs no token (health checks)")
    flag("--audit_log_file", default="", help="append JSON lines for reloads, label changes and auth failures")
    flag("--max_requests_in_flight", type=int, default=512,
         help="more requests at once (both ports) get 429 / RESOURCE_EXHAUSTED (0: no limit)")
    flag("--rest_api_max_connections", type=int, default=1024,
         help="more open REST connections get 503 and are closed (0: no limit)")
    flag("--rest_api_idle_timeout_s", type=float, default=30.0,
         help="close REST connections that send no complete request header for this long (idle or trickling)")
    flag("--drain_timeout_s", type=float, default=10.0,
         help="on SIGTERM: status answers 503, listeners close, requests in flight get this long to finish")
    for name in UNSUPPORTED:
        flag(f"--{name}", dest=f"unsupported_{name}", default=None, help=argparse.SUPPRESS)
    return p


@dataclass
class Settings:
    """Everything the flags decide, checked and loaded (config files parsed)."""

    args: argparse.Namespace
    model_config: object
    batching: object | None
    metrics_path: str | None
    grpc_options: list
    access: object
    ssl_config: object | None
    session_config: object


def parse_settings(argv: list[str]) -> Settings:
    """Parse flags and the files they name; raise SystemExit(2) with every reason."""
    import repository
    from serving import protos
    from serving.auth import Access
    from serving.model_config import load_model_server_config, single_model_config
    from serving.tls import load_ssl_config
    from serving.batching import BatchingParameters
    from serving.grpc_service import server_options
    from serving.servable import session_config

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(VERSION)
        raise SystemExit(0)
    used = [name for name in UNSUPPORTED if getattr(args, f"unsupported_{name}") is not None]
    problems = [f"--{name} is a tensorflow_model_server flag this server does not support." for name in used]
    if not args.port and not args.rest_api_port:
        problems.append("neither --port nor --rest_api_port is set: nothing would serve.")
    model_config = batching = metrics_path = grpc_options = access = ssl_config = session = None
    if args.auth_allow_status and not args.auth_token_file:
        problems.append("--auth_allow_status needs --auth_token_file (without tokens everything is open).")
    try:
        access = Access(args.auth_token_file, args.auth_allow_status)
        ssl_config = load_ssl_config(args.ssl_config_file) if args.ssl_config_file else None
        grpc_options = server_options(args.grpc_channel_arguments)
        session = session_config(args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism,
                                 args.tensorflow_session_parallelism)
        if args.model_config_file and args.model_base_path:
            raise ValueError("use either --model_config_file or --model_name/--model_base_path, not both.")
        if args.model_config_file:
            model_config = load_model_server_config(args.model_config_file)
        elif args.model_base_path:
            model_config = single_model_config(args.model_name, args.model_base_path)
        else:
            raise ValueError("--model_base_path or --model_config_file is required.")
        outside = [m.name for m in model_config.model_config_list.config if args.model_base_path_root
                   and not repository.resolves_inside(m.base_path, args.model_base_path_root)]
        if outside:
            raise ValueError(f"--model_base_path_root {args.model_base_path_root!r}: the base paths of {outside} "
                             f"resolve outside it.")
        if args.batching_parameters_file and not args.enable_batching:
            raise ValueError("--batching_parameters_file needs --enable_batching.")
        if args.enable_batching:
            text = Path(args.batching_parameters_file).read_text() if args.batching_parameters_file else ""
            batching = BatchingParameters.from_text(text, f"--batching_parameters_file {args.batching_parameters_file!r}")
        if args.monitoring_config_file:
            source = f"--monitoring_config_file {args.monitoring_config_file!r}"
            monitoring = protos.parse_text(Path(args.monitoring_config_file).read_text(), protos.MonitoringConfig, source)
            if monitoring.prometheus_config.enable:
                metrics_path = monitoring.prometheus_config.path or "/monitoring/prometheus/metrics"
    except (ValueError, OSError) as e:
        problems.append(str(e))
    if problems:
        parser.print_usage(sys.stderr)
        print("python -m serving: error:\n  " + "\n  ".join(problems), file=sys.stderr)
        raise SystemExit(2)
    return Settings(args, model_config, batching, metrics_path, grpc_options, access, ssl_config, session)


async def serve(settings: Settings) -> None:
    import grpc

    from serving.audit import AuditLog
    from serving.core import ServingCore
    from serving.errors import ServingError
    from serving.grpc_service import UndecodableRequests, add_services
    from serving.manager import ModelManager
    from serving.metrics import Metrics
    from serving.rest import RestApi
    from serving.tls import grpc_credentials, rest_context

    args = settings.args
    metrics = Metrics()
    manager = ModelManager(settings.model_config, metrics, enable_warmup=args.enable_model_warmup,
                           session_config=settings.session_config,
                           allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
                           max_load_retries=args.max_num_load_retries,
                           load_retry_interval_s=args.load_retry_interval_micros / 1e6,
                           path_root=args.model_base_path_root)
    core = ServingCore(manager, metrics, settings.batching, args.rest_api_num_threads,
                       check_method_names=args.enable_signature_method_name_check, access=settings.access,
                       audit=AuditLog(args.audit_log_file), max_in_flight=args.max_requests_in_flight)
    loop = asyncio.get_running_loop()
    # Both ports are taken before the models load (seconds to minutes), so a port in use fails at once; they answer
    # only once the models are loaded, as TF Serving's do. Its words (server.cc, main.cc), then ours.
    if args.port:
        # not SO_REUSEPORT (gRPC's default): with it a second server on the port shares it silently
        options = list(dict([("grpc.so_reuseport", 0), *settings.grpc_options]).items())
        grpc_server = grpc.aio.server(options=options, interceptors=[UndecodableRequests()])
        add_services(grpc_server, core, args.enable_serialization_as_tensor_content, args.allow_remote_config_reload,
                     Path(args.model_base_path_root) if args.model_base_path_root else None)
        try:
            address = f"{args.host}:{args.port}"
            bound = (grpc_server.add_secure_port(address, grpc_credentials(settings.ssl_config)) if settings.ssl_config
                     else grpc_server.add_insecure_port(address))
        except RuntimeError:
            bound = 0
        if not bound:
            raise SystemExit("Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server "
                             f"at {address} {port_in_use('--port', args.port, 'cannot bind')}")
    servers = []
    if args.rest_api_port:
        rest = RestApi(core, timeout_s=args.rest_api_timeout_in_ms / 1000 or None,
                       max_body_bytes=args.rest_api_max_body_bytes, metrics_path=settings.metrics_path,
                       enable_cors=args.rest_api_enable_cors_support, idle_timeout_s=args.rest_api_idle_timeout_s,
                       max_connections=args.rest_api_max_connections)
        tls = rest_context(settings.ssl_config) if settings.ssl_config else None
        try:
            servers.append(await loop.create_server(rest.make_server(), args.host, args.rest_api_port, ssl=tls,
                                                    start_serving=False))
        except OSError as e:
            raise SystemExit(f"Failed to start HTTP Server at {args.host}:{args.rest_api_port} "
                             f"{port_in_use('--rest_api_port', args.rest_api_port, os.strerror(e.errno))}") from None
    try:
        await loop.run_in_executor(None, manager.start, args.file_system_poll_wait_seconds)
    except ServingError as e:  # TF Serving: "Failed to start server. Error: FAILED_PRECONDITION: ..."
        raise SystemExit(f"Failed to start server. Error: {e.status_string()}") from None
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        asyncio.create_task(watch_config_file(manager, metrics, args.model_config_file,
                                              args.model_config_file_poll_wait_seconds))
    warn_if_exposed(args)
    if args.port:
        await grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", args.host, args.port)
    for server in servers:
        await server.start_serving()
        log.info("Exporting HTTP%s/REST API at:%s:%d ...", "S" if tls else "", args.host, args.rest_api_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_tokens, core)
    await stop.wait()
    log.info("Shutting down: readiness off, no new connections, up to %ss for requests in flight (--drain_timeout_s)",
             args.drain_timeout_s)
    draining = []
    if args.rest_api_port:
        rest.draining = True
        draining.append(rest.drain(args.drain_timeout_s))
    for server in servers:
        server.close()
    if args.port:
        draining.append(grpc_server.stop(grace=args.drain_timeout_s))
    await asyncio.gather(*draining)
    for server in servers:
        await server.wait_closed()
    manager.stop()
    core.close()


def warn_if_exposed(args: argparse.Namespace) -> None:
    """Say it loudly when anyone on the network can call the server without credentials or encryption."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if loopback:
        return
    missing = [what for what, on in (("authentication (--auth_token_file)", args.auth_token_file),
                                     ("TLS (--ssl_config_file)", args.ssl_config_file)) if not on]
    if missing:
        log.warning("Serving on %s, reachable from other machines, without %s: anyone who can reach the ports can "
                    "use every model. Bind --host=127.0.0.1, or see SECURITY.md.", args.host, " or ".join(missing))


def reload_tokens(core) -> None:
    """SIGHUP: re-read --auth_token_file (a broken file keeps the tokens in force)."""
    if not core.access.enabled:
        return
    try:
        core.access.reload()
    except ValueError as e:
        log.error("Keeping the previous tokens: %s", e)
        core.audit.record("token_reload", core.access.token_file, f"INVALID_ARGUMENT: {e}", None, "local")
        return
    core.audit.record("token_reload", core.access.token_file, "OK", None, "local")


def port_in_use(flag: str, port: int, reason: str | None) -> str:
    return f"({flag}={port}: {reason}); another server is probably using it: stop it, or choose another port."


async def watch_config_file(manager, metrics, path: str, every_s: int) -> None:
    """Re-read --model_config_file; apply it when it changed. One that cannot be applied (a syntax error, a label
    on a version not AVAILABLE) leaves the config in force, is logged once, and sets the gauge
    serving_model_config_file_error to 1 until the file applies again."""
    from serving.errors import ServingError
    from serving.model_config import load_model_server_config

    loop = asyncio.get_running_loop()
    problem = ""
    while True:
        await asyncio.sleep(every_s)
        try:
            config = load_model_server_config(path)
            if config != manager.config:
                log.info("Model config %s changed; applying it", path)
                await loop.run_in_executor(None, manager.reload_config, config)
        except (ValueError, ServingError) as e:
            if str(e) != problem:
                log.error("Keeping the model config in force, the changed file cannot be applied: %s", e)
            problem = str(e)
        else:
            problem = ""
        metrics.config_file_error.set(1 if problem else 0)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from serving.rest import QuietClientErrors

    logging.getLogger("aiohttp.server").addFilter(QuietClientErrors())
    # Each JSON request allocates thousands of short-lived objects; with TensorFlow's millions of
    # long-lived ones in the heap, default collector settings cost more than parsing (measured 2.5x
    # throughput on a 23 KB request). Loaded models are frozen out of collection (manager.py); collect
    # the young generation less often.
    gc.set_threshold(10_000, 50, 1000)
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
