"""`python -m serving`: a drop-in for tensorflow_model_server, with its flag names and meanings.

    python -m serving --rest_api_port=8501 --model_name=digits --model_base_path=$PWD/model_repository/digits

Flags and config files are checked before anything starts: an unknown flag, a TF Serving flag
this server does not implement, or a bad config file exits 2 with the reason.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import uvloop

if TYPE_CHECKING:
    from serving.server import Settings


VERSION = "maas-serving 0.1.0 (TensorFlow Serving 2.21 API)"
GRPC_MIN_THREADS = 64  # the default --grpc_max_threads on any machine: 64 concurrent calls can share one batch
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
    cpus = len(os.sched_getaffinity(0))  # TF Serving's port::NumSchedulableCPUs(): the CPUs this process may use
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
    flag("--grpc_max_threads", type=int, default=max(GRPC_MIN_THREADS, 4 * cpus),
         help="threads that run gRPC calls; more calls wait for one. A call waiting for its batch holds its thread, "
              f"so this bounds the calls gRPC brings to one batch: at least {GRPC_MIN_THREADS} (TF Serving: 4 a CPU)")
    flag("--ssl_config_file", default="", help="text-format SSLConfig (PEM key, cert, client CA): TLS on both ports")
    flag("--version", action="store_true", help="print the version and exit")
    # Ours, not tensorflow_model_server's:
    flag("--host", default="0.0.0.0", help="address both servers bind (TF Serving binds all interfaces)")
    flag("--rest_api_max_body_bytes", type=int, default=8 * 2**20,
         help="larger REST bodies (also once decompressed) get 413. A large body is parsed in slices, but each holds "
              "the GIL: an 8 MB body delays other clients up to ~0.15 s on 2 cores (SECURITY.md); send larger "
              "batches over gRPC, or raise it knowingly")
    flag("--grpc_max_tensor_bytes", type=int, default=64 * 2**20,
         help="what the tensors of one gRPC request may expand to beyond the bytes it carries (typed values fill "
              "their shape, strings cost 32 bytes each): more is RESOURCE_EXHAUSTED before anything is allocated. "
              "Numbers in tensor_content are read in place and do not count (0: no limit)")
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
    flag("--request_log_max_file_bytes", type=int, default=64 * 2**20,
         help="request log files (a model's logging_config) are rotated before they grow past this")
    flag("--request_log_max_disk_bytes", type=int, default=2**30,
         help="the request log files of every filename_prefix together may hold this much on disk; past it records "
              "are dropped and counted (serving_request_log_dropped{reason=\"disk_bound\"}) until files are removed")
    flag("--server_processes", type=int, default=1,
         help="complete servers sharing the ports (SO_REUSEPORT) under one parent, each on its share of the CPUs: "
              "uses every core where one process's Python is the limit (small models; benchmarks/results/multicore_*.md)"
              "; each holds its own copy of the models; HandleReloadConfigRequest is refused (serving/supervisor.py)")
    flag("--server_process_index", type=int, default=None, help=argparse.SUPPRESS)  # set by the parent for a child
    flag("--server_processes_dir", default="", help=argparse.SUPPRESS)  # where the children publish their metrics
    for name in UNSUPPORTED:
        flag(f"--{name}", dest=f"unsupported_{name}", default=None, help=argparse.SUPPRESS)
    return p


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
    from serving.server import Settings

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
    if args.request_log_max_file_bytes <= 0 or args.request_log_max_disk_bytes < 0:
        problems.append(f"--request_log_max_file_bytes={args.request_log_max_file_bytes} and "
                        f"--request_log_max_disk_bytes={args.request_log_max_disk_bytes}: expected a positive size "
                        f"and a size of at least 0 (bytes).")
    if args.server_processes < 1:
        problems.append(f"--server_processes={args.server_processes}: expected at least 1.")
    if args.port and args.grpc_max_threads < 1:
        problems.append(f"--grpc_max_threads={args.grpc_max_threads}: expected at least 1 (the threads that run "
                        "gRPC calls).")
    if args.auth_allow_status and not args.auth_token_file:
        problems.append("--auth_allow_status needs --auth_token_file (without tokens everything is open).")
    try:
        access = Access(args.auth_token_file, args.auth_allow_status)
        ssl_config = load_ssl_config(args.ssl_config_file) if args.ssl_config_file else None
        grpc_options = server_options(args.grpc_channel_arguments)
        session = session_config(*thread_counts(args))
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
            share = cores_share(args)  # of several server processes, each runs its share of the batches at once
            source = f"--batching_parameters_file {args.batching_parameters_file!r}"
            batching = BatchingParameters.from_text(text, source,
                                                    BatchingParameters(num_batch_threads=share) if share else None)
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


def cores_share(args: argparse.Namespace) -> int | None:
    """Of several server processes, each one's share of the cores (at least 1): a child's are the CPUs its parent
    pinned it to (serving.supervisor.cpu_shares); a check of the flags without a parent counts the CPUs over the
    processes. None for one process."""
    if args.server_processes <= 1:
        return None
    cpus = len(os.sched_getaffinity(0))
    return cpus if args.server_process_index is not None else max(1, cpus // args.server_processes)


def thread_counts(args: argparse.Namespace) -> tuple[int, int, int]:
    """TF's (intra-op, inter-op, session) threads as the flags set them; with several server processes and none set,
    each process takes its share of the cores: 1 intra-op thread and its share of inter-op (batch threads too, where
    the batching file leaves num_batch_threads unset: 1.1x REST, 1.15x gRPC on mid with 2 processes on 2 cores)."""
    counts = (args.tensorflow_intra_op_parallelism, args.tensorflow_inter_op_parallelism,
              args.tensorflow_session_parallelism)
    share = cores_share(args)
    return (1, share, 0) if share and not any(counts) else counts


def on_one_cpu_take_turns() -> bool:
    """On one CPU (a server pinned to one core; each process of --server_processes), run this process's threads
    under SCHED_BATCH, whether it was set. Its threads take turns on that CPU (the event loop reading and answering
    requests, a batch thread running the model); under SCHED_OTHER a thread that wakes (the loop, for a request's
    bytes) may preempt the one running (a batch in the middle of its kernels); under SCHED_BATCH it waits for the
    running one's turn to end. Other programs' threads still preempt them (sched(7)). Mid, two processes on 2
    cores, REST, paired with SCHED_OTHER: preemptions 1.19 -> 0.71-0.77 a request, requests/s +3.4 % on average
    over 11 pairs (10 ahead); gRPC +2.1 % over 3. Pinned, no difference (REST +0.2 % over 8 pairs, gRPC -0.3 %
    over 6); one connection and open loop at 1,500/s unchanged (benchmarks/README.md)."""
    if len(os.sched_getaffinity(0)) != 1:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # no privilege needed: a lower claim
    except OSError as e:  # a sandbox that forbids the call: the server runs as before
        logging.getLogger("serving").info("Not switching to SCHED_BATCH on one CPU: %s", e)
        return False
    return True


def main(argv: list[str] | None = None) -> NoReturn:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Each JSON request allocates thousands of short-lived objects; with TensorFlow's millions of
    # long-lived ones in the heap, default collector settings cost more than parsing (measured 2.5x
    # throughput on a 23 KB request). Loaded models are frozen out of collection (manager.py); collect
    # the young generation less often.
    gc.set_threshold(10_000, 50, 1000)
    argv = sys.argv[1:] if argv is None else argv
    flags = build_parser().parse_args(argv)  # without TensorFlow: a supervisor of several processes needs none
    index = flags.server_process_index
    if flags.server_processes > 1 and index is None and not flags.version:
        from serving.supervisor import supervise

        status = supervise(argv, flags)
        logging.shutdown()
        os._exit(status)
    on_one_cpu_take_turns()  # before any thread starts: they inherit it
    from serving.server import serve  # before parse_settings, as a server has always imported: gRPC, then TensorFlow

    with contextlib.redirect_stderr(io.StringIO()) if index else contextlib.nullcontext():  # the 1st process says
        settings = parse_settings(argv)  # what is wrong with the flags, for all of them
    if index is not None:
        logging.getLogger().handlers[0].setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s %(name)s [process {index + 1}]: %(message)s"))
    # libuv's loop: 3 % less CPU a request than asyncio's (mid, REST). Not with TLS: uvloop reads a connection as soon
    # as connection_made returns (even paused there), so a ClientHello could reach rest_connections.Accepted before
    # start_tls took the socket, and that handshake waited for ever (1 in 4 connections); asyncio queues a socket's
    # reads behind the callbacks already scheduled, the handshake's start among them
    run = asyncio.run if settings.ssl_config else uvloop.run
    run(serve(settings))
    logging.shutdown()
    os._exit(0)  # drained: a model call still running past the drain is abandoned, not waited for at exit


if __name__ == "__main__":
    main()
