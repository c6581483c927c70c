"""The server `python -m serving` runs: both front ends on one ServingCore, the model manager, and what keeps
them going (the --model_config_file watcher, SIGHUP's token reload, SIGTERM's drain). `serving/__main__.py`
parses the flags into `Settings`; this module only runs them.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from tensorflow.core.protobuf import config_pb2

from serving import protos
from serving.audit import AuditLog
from serving.auth import Access
from serving.batching import BatchingParameters
from serving.core import ServingCore
from serving.errors import ServingError
from serving.grpc_service import CallThreads, UndecodableRequests, add_services
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.model_config import ModelServerConfig, load_model_server_config
from serving.ports import port_in_use
from serving.request_log import RequestLog
from serving.shared_metrics import PUBLISH_EVERY_S, SharedMetrics
from serving.rest import RestApi
from serving.tls import grpc_credentials, rest_context

log = logging.getLogger("serving")
CONFIG_FILE_PEER = "config file"  # who asked, in the audit log, for reloads of a rewritten --model_config_file
DESCRIPTOR_RESERVE = 256  # descriptors beyond the connections: listeners, model files, logs, TensorFlow's own


@dataclass
class Settings:
    """Everything the flags decide, checked and loaded (config files parsed)."""

    args: argparse.Namespace
    model_config: ModelServerConfig
    batching: BatchingParameters | None
    metrics_path: str | None
    grpc_options: list[tuple[str, int | str]]
    access: Access
    ssl_config: protos.SSLConfig | None
    session_config: config_pb2.ConfigProto


async def serve(settings: Settings) -> None:
    args = settings.args
    metrics = Metrics()
    shared = (SharedMetrics(Path(args.server_processes_dir), args.server_process_index)
              if args.server_process_index is not None else None)  # one of several processes (serving.supervisor)
    manager = ModelManager(settings.model_config, metrics, enable_warmup=args.enable_model_warmup,
                           session_config=settings.session_config,
                           allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
                           max_load_retries=args.max_num_load_retries,
                           load_retry_interval_s=args.load_retry_interval_micros / 1e6,
                           path_root=args.model_base_path_root)
    core = ServingCore(manager, metrics, settings.batching, args.rest_api_num_threads,
                       check_method_names=args.enable_signature_method_name_check, access=settings.access,
                       audit=AuditLog(args.audit_log_file), max_in_flight=args.max_requests_in_flight,
                       request_log=RequestLog(metrics, args.request_log_max_file_bytes,
                                              args.request_log_max_disk_bytes), shared_metrics=shared)
    loop = asyncio.get_running_loop()
    # Both ports are taken before the models load (seconds to minutes), so a port in use fails at once; they answer
    # only once the models are loaded, as TF Serving's do. Its words (server.cc, main.cc), then ours.
    if args.port:
        # SO_REUSEPORT (gRPC's default) only for the processes of one server (the parent checked the ports were free):
        # otherwise a second server on the port would share it silently
        options = list(dict([("grpc.so_reuseport", int(shared is not None)), *settings.grpc_options]).items())
        # calls past --max_requests_in_flight are refused by gRPC's core (RESOURCE_EXHAUSTED), not queued for a thread
        grpc_server = grpc.server(CallThreads(core, args.grpc_max_threads), options=options,
                                  interceptors=[UndecodableRequests()],
                                  maximum_concurrent_rpcs=args.max_requests_in_flight or None)
        add_services(grpc_server, core, args.enable_serialization_as_tensor_content, args.allow_remote_config_reload,
                     Path(args.model_base_path_root) if args.model_base_path_root else None,
                     args.grpc_max_tensor_bytes, one_of_processes=args.server_processes if shared else 1)
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
        tls = rest_context(settings.ssl_config) if settings.ssl_config else None
        rest = RestApi(core, timeout_s=args.rest_api_timeout_in_ms / 1000 or None,
                       max_body_bytes=args.rest_api_max_body_bytes, metrics_path=settings.metrics_path,
                       enable_cors=args.rest_api_enable_cors_support, idle_timeout_s=args.rest_api_idle_timeout_s,
                       max_connections=args.rest_api_max_connections, tls=tls)
        try:
            servers.append(await loop.create_server(rest.make_server(), args.host, args.rest_api_port,
                                                    start_serving=False, reuse_port=shared is not None))
        except OSError as e:
            raise SystemExit(f"Failed to start HTTP Server at {args.host}:{args.rest_api_port} "
                             f"{port_in_use('--rest_api_port', args.rest_api_port, os.strerror(e.errno))}") from None
    try:
        await loop.run_in_executor(None, core.start, args.file_system_poll_wait_seconds)
    except ServingError as e:  # TF Serving: "Failed to start server. Error: FAILED_PRECONDITION: ..."
        raise SystemExit(f"Failed to start server. Error: {e.status_string()}") from None
    if shared is not None and settings.metrics_path:
        asyncio.create_task(publish_metrics(core, shared))
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        asyncio.create_task(watch_config_file(core, args.model_config_file, args.model_config_file_poll_wait_seconds))
    warn_if_exposed(args)
    fit_descriptor_limit(([args.rest_api_max_connections] if args.rest_api_port else [])
                         + ([int(dict(settings.grpc_options).get("grpc.max_allowed_incoming_connections", 0))]
                            if args.port else []))
    if args.port:
        grpc_server.start()
        log.info("Running gRPC ModelServer at %s:%d ...", args.host, args.port)
    for server in servers:
        await server.start_serving()
        log.info("Exporting HTTP%s/REST API at:%s:%d ...", "S" if tls else "", args.host, args.rest_api_port)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, core.reload_tokens)
    await stop.wait()
    log.info("Shutting down: readiness off, no new REST connections, new requests refused, up to %ss for the "
             "requests received (--drain_timeout_s)", args.drain_timeout_s)
    for server in servers:
        server.close()
    if not await core.drain(args.drain_timeout_s):
        log.warning("Requests still in flight after %ss (--drain_timeout_s) are cancelled", args.drain_timeout_s)
    if args.port:
        grpc_server.stop(grace=None)  # nothing should be left: it was drained above
    if args.rest_api_port:
        await rest.close()
    for server in servers:
        await server.wait_closed()
    manager.stop()
    core.close()  # after the drain: the request log's files are flushed and closed


def warn_if_exposed(args: argparse.Namespace) -> None:
    """Say it loudly when anyone on the network can call the server without credentials or encryption."""
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


def fit_descriptor_limit(connection_caps: list[int]) -> None:
    """Let the ports served reach their connection caps without running out of descriptors (EMFILE took both down):
    the soft RLIMIT_NOFILE is raised to the hard one, as Go does for every program; a warning says when even that
    does not hold the caps and a reserve (a cap of 0 is no cap: nothing can hold that)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = sum(connection_caps) + DESCRIPTOR_RESERVE
    if 0 in connection_caps or (hard != resource.RLIM_INFINITY and needed > hard):
        log.warning("Open files limit %s: the connection caps (REST --rest_api_max_connections, gRPC "
                    "grpc.max_allowed_incoming_connections: %s; 0 is none) and %d descriptors for the rest do not "
                    "fit; a flood of connections can exhaust it. Lower the caps or raise the limit (ulimit -n).",
                    hard, " and ".join(map(str, connection_caps)), DESCRIPTOR_RESERVE)


async def publish_metrics(core: ServingCore, shared: SharedMetrics) -> None:
    """This process's metrics where its siblings read them, every PUBLISH_EVERY_S (a render takes ~1 ms); a write
    that fails (a full disk) is said once and tried again at the next."""
    failed = False
    while True:
        await asyncio.sleep(PUBLISH_EVERY_S)
        try:
            shared.publish(core.metrics.render())
        except OSError as e:
            if not failed:
                log.warning("Cannot publish this process's metrics to the other server processes (%s): the "
                            "server's metrics lack them until it can", e)
            failed = True
        else:
            failed = False


async def watch_config_file(core: ServingCore, path: str, every_s: int) -> None:
    """Re-read --model_config_file; apply it when it changed, audited as a reload from peer "config file". One that
    cannot be applied (a syntax error, a label on a version not AVAILABLE) leaves the config in force, is logged
    once, and sets the gauge serving_model_config_file_error to 1 until the file applies again."""
    loop = asyncio.get_running_loop()
    problem, refused = "", None  # refused: the config last refused, tried again each poll (a version may load)
    while True:
        await asyncio.sleep(every_s)
        try:
            config = load_model_server_config(path)
            if config != core.config:
                log.info("Model config %s changed; applying it", path)
                retry, refused = config == refused, config
                await loop.run_in_executor(None, core.reload_config, config, None, CONFIG_FILE_PEER, retry)
        except (ValueError, ServingError) as e:
            if str(e) != problem:
                log.error("Keeping the model config in force, the changed file cannot be applied: %s", e)
            problem = str(e)
        else:
            problem, refused = "", None
        core.record_config_file(applies=not problem)
