"""TF Serving's gRPC API: tensorflow.serving.PredictionService and ModelService, on grpc's thread pool server.

The same ServingCore as the REST API answers: one request path, two front ends. Each call runs on a thread of the
server's pool (--grpc_max_threads), as TF Serving's synchronous server runs it, and the core's request coroutines are
completed there (core.run_blocking), blocking that thread in the batch queue: grpc.aio cost 0.32 ms of CPU a call
before any handler ran, the thread pool server 0.15 (benchmarks/results/serving_*.md, the stacks' floors). Errors abort
the call with the ServingError's gRPC code and message, as TF Serving's ToGRPCStatus does.
"""
from __future__ import annotations

import functools
import ipaddress
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError, Message
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

import repository
from serving import api_protos, signatures
from serving.api_protos import typed_tensor_proto
from serving.auth import Token
from serving.core import ServingCore, run_blocking
from serving.errors import FailedPrecondition, InvalidArgument, PayloadTooLarge, PermissionDenied, as_serving_error
from serving.model_config import check_server_config
from serving.protos import MAX_MESSAGE_BYTES
from serving.servable import Servable

CONNECTION_DEFAULTS = {  # what gRPC's core holds per client, set as the REST port's flags set it (SECURITY.md)
    "grpc.max_allowed_incoming_connections": 1024,  # as --rest_api_max_connections; past it closed at accept
    "grpc.server_handshake_timeout_ms": 30_000,  # as --rest_api_idle_timeout_s: no preface or ClientHello, closed
    "grpc.max_connection_idle_ms": 30_000,  # no call for this long: GOAWAY (clients reconnect on their next call)
    "grpc.keepalive_time_ms": 60_000,  # a call's connection is pinged after a minute of silence...
    "grpc.keepalive_timeout_ms": 20_000,  # ...and closed when the peer does not answer (gRPC: 2 h and 20 s)
}


def server_options(channel_arguments: str) -> list[tuple[str, int | str]]:
    """TF Serving's message limits, our connection defaults, then --grpc_channel_arguments ("key=value,...")."""
    options: dict[str, int | str] = {"grpc.max_send_message_length": MAX_MESSAGE_BYTES,
                                     "grpc.max_receive_message_length": MAX_MESSAGE_BYTES, **CONNECTION_DEFAULTS}
    for item in filter(None, (part.strip() for part in channel_arguments.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, received {item!r}")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return list(options.items())


Answer = tuple[Message, Servable | None]  # an RPC's response, and the servable that gave it (None: none did)


@dataclass(frozen=True)
class Caller:
    """Who made a call, as authorization found them: what a reload's own rule and its audit line need."""

    peer: str
    token: Token | None


def _answer(api: str):
    """Run an RPC method: authorize it, time it, count it (under the request's model and the version of the
    servable that answered, which the method returns with its response), turn any exception into the call's
    status."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, request, context):
            started = time.perf_counter()
            models, peer, servable = _models(request), context.peer(), None
            try:
                credentials = dict(context.invocation_metadata() or ()).get("authorization")
                token = self.core.authorize(credentials, api, models, peer, f"gRPC {method.__name__}")
                if hasattr(request, "model_spec") and not request.HasField("model_spec"):
                    raise InvalidArgument("Missing ModelSpec")  # TF Serving's first check, before any lookup
                with self.core.admitted(in_time=getattr(_received, "in_time", False)):
                    response, servable = run_blocking(method(self, request, Caller(peer, token)))
                code = grpc.StatusCode.OK
            except Exception as e:  # every error becomes a status; the server keeps serving
                error = as_serving_error(e, f"gRPC {method.__name__}")
                code, message = error.code, error.message
                del error  # not kept past here: its traceback holds this frame (see rest.py)
            model, version = (models[0] if models else ""), (str(servable.version) if servable is not None else "")
            self.core.record(model, version, api, "GRPC", code.name, time.perf_counter() - started)
            if code == grpc.StatusCode.OK:
                return response
            context.abort(code, message)

        return wrapper

    return decorate


def _models(request) -> list[str]:
    """The models a request would use, for authorization (none for a reload: it needs the admin role); the first
    is the one its metrics name."""
    if hasattr(request, "model_spec"):
        return [request.model_spec.name]
    if hasattr(request, "tasks"):
        return [task.model_spec.name for task in request.tasks]
    return []


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, core: ServingCore, tensor_content: bool = False, max_tensor_bytes: int = 0):
        self.core = core
        self.max_tensor_bytes = max_tensor_bytes  # what a request's tensors may expand to (--grpc_max_tensor_bytes)
        # TF Serving answers in typed fields (float_val, ...) unless
        # --enable_serialization_as_tensor_content; clients such as mnist_client.py read float_val.
        self.to_proto = tf.make_tensor_proto if tensor_content else typed_tensor_proto

    def _servable(self, spec: model_pb2.ModelSpec) -> Servable:
        if not spec.name:  # server_core.cc ServableRequestFromModelSpec
            raise InvalidArgument("ModelSpec has no name specified.")
        choice = spec.WhichOneof("version_choice")
        return self.core.servable(
            spec.name,
            version=spec.version.value if choice == "version" else None,
            label=spec.version_label if choice == "version_label" else None,
        )

    @_answer("predict")
    async def Predict(self, request: predict_pb2.PredictRequest, caller: Caller) -> Answer:
        """Nothing is expanded before it is known to be wanted and affordable: the signature, each tensor as its
        proto declares it (parsing, names, dtypes, string ranks: predict_util.cc's checks), then what decoding
        them would allocate against --grpc_max_tensor_bytes; then they are decoded, off the event loop when large."""
        servable = self._servable(request.model_spec)
        signature = self.core.predict_signature(servable, request.model_spec.signature_name)
        declared = {name: Declared.of(name, proto) for name, proto in request.inputs.items()}
        output_filter = list(request.output_filter)
        self.core.check_predict_request(servable, signature, declared, output_filter)
        expanded = 0
        for tensor in declared.values():
            expanded += tensor.expanded_bytes
            if self.max_tensor_bytes and expanded > self.max_tensor_bytes:
                raise PayloadTooLarge(
                    f"input '{tensor.name}' declares shape {tensor.dims} of {signatures.data_type_string(tensor.dtype)}"
                    f": the request's tensors would expand to {expanded} bytes beyond what it carries; the limit is "
                    f"{self.max_tensor_bytes} (--grpc_max_tensor_bytes). Numbers sent in tensor_content are read in "
                    f"place and do not count")
        async with self.core.decoding(expanded) as run:
            inputs = await run(lambda tensors: {name: tensor.decode() for name, tensor in tensors.items()}, declared)
            del declared
            outputs = await self.core.predict(servable, signature, inputs, output_filter, request.model_spec)
            del inputs
            return await run(api_protos.predict_response, servable, signature, outputs, self.to_proto), servable

    @_answer("classify")
    async def Classify(self, request: classification_pb2.ClassificationRequest, caller: Caller) -> Answer:
        servable = self._servable(request.model_spec)
        signature = self.core.classify_signature(servable, request.model_spec.signature_name)  # before the input
        examples = signatures.serialized_examples(request.input)
        classes, scores = await self.core.classify(servable, signature, examples, request.model_spec)
        return api_protos.classification_response(servable, signature, classes, scores, len(examples)), servable

    @_answer("regress")
    async def Regress(self, request: regression_pb2.RegressionRequest, caller: Caller) -> Answer:
        servable = self._servable(request.model_spec)
        signature = self.core.regress_signature(servable, request.model_spec.signature_name)  # before the input
        examples = signatures.serialized_examples(request.input)
        values = await self.core.regress(servable, signature, examples, request.model_spec)
        return api_protos.regression_response(servable, signature, values), servable

    @_answer("multi_inference")
    async def MultiInference(self, request: inference_pb2.MultiInferenceRequest, caller: Caller) -> Answer:
        """multi_inference_helper.cc and multi_inference.cc, in their order: the first task's model is looked up
        (no task: no name), then each task is checked in turn, then the input is read and every task runs in one
        session call."""
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        servable = self._servable(spec)
        tasks = self.core.multi_inference_tasks(servable, list(request.tasks))
        examples = signatures.serialized_examples(request.input)
        outcomes = await self.core.multi_inference(servable, tasks, examples, list(request.tasks))
        return api_protos.multi_inference_response(servable, tasks, outcomes, len(examples)), servable

    @_answer("metadata")
    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, caller: Caller) -> Answer:
        if not request.metadata_field:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise InvalidArgument(f"Metadata field {field} is not supported")
        servable = self._servable(request.model_spec)
        spec, signature_defs = self.core.metadata(servable)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=spec)
        response.metadata["signature_def"].Pack(signature_defs)
        return response, servable


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """Status, and config reloads: a reload names directories the server loads and runs models from, so it is
    accepted only from an admin token (with --auth_token_file) or, with auth off, from this machine (unless
    --allow_remote_config_reload), and with --model_base_path_root only for base paths that resolve (symlinks
    followed) inside that directory. Every reload is audited. A server of several processes (--server_processes)
    refuses reloads: one would reach one process only."""

    def __init__(self, core: ServingCore, remote_reload: bool = False, base_path_root: Path | None = None,
                 one_of_processes: int = 1):
        self.core = core
        self.remote_reload = remote_reload
        self.base_path_root = base_path_root
        self.one_of_processes = one_of_processes

    @_answer("status")
    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, caller: Caller) -> Answer:
        spec = request.model_spec  # an empty name is looked up, as TF Serving does: NOT_FOUND
        version = spec.version.value if spec.WhichOneof("version_choice") == "version" else None
        return self.core.status(spec.name, version), None

    @_answer("reload")
    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,
                                        caller: Caller) -> Answer:
        """Apply a new ModelServerConfig: add and remove models, change policies and labels."""
        if self.one_of_processes > 1:
            raise FailedPrecondition(
                f"HandleReloadConfigRequest would change one of this server's {self.one_of_processes} processes "
                "(--server_processes), not the others: change the --model_config_file they poll instead "
                "(--model_config_file_poll_wait_seconds), or run one process.")
        refusal = self._refusal(request.config, caller.peer)
        if refusal is not None:
            self.core.audit_refusal(refusal, "gRPC HandleReloadConfigRequest", caller.token, caller.peer)
            raise refusal
        if request.config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                                  "Only ModelConfigList is currently supported")
        try:
            check_server_config(request.config, "ReloadConfigRequest")
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        self.core.reload_config(request.config, caller.token, caller.peer)  # blocking this call's thread
        return model_management_pb2.ReloadConfigResponse(), None

    def _refusal(self, config, peer: str) -> PermissionDenied | None:
        if not (self.core.authenticates or self.remote_reload or is_loopback(peer)):
            return PermissionDenied("HandleReloadConfigRequest is accepted only from this machine (loopback); start "
                                    "the server with --auth_token_file (admin tokens may reload from anywhere) or "
                                    "--allow_remote_config_reload to accept it from others")
        for model in config.model_config_list.config:
            if self.base_path_root and not repository.resolves_inside(model.base_path, self.base_path_root):
                return PermissionDenied(f"model {model.name[:100]!r}: its base_path is outside --model_base_path_root")
        return None


CONTENT_DTYPES = {  # DataType -> numpy dtype, for tensor_content read in place
    tf.as_dtype(dtype).as_datatype_enum: np.dtype(dtype)
    for dtype in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                  np.uint32, np.uint64, np.bool_)
}


NOT_REQUEST_DTYPES = (types_pb2.DT_INVALID, types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT)
COMPLEX_DTYPES = (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128)  # two numbers a value in scomplex_val/dcomplex_val
STRING_BYTES = 32  # what a string element costs beyond its characters (a pointer, an object's header)


@dataclass(frozen=True)
class Declared:
    """A request tensor as its proto declares it, checked as TF's Tensor::FromProto checks it before allocating
    anything (a shape that is not one, a dtype a request cannot carry, tensor_content that does not fill the shape:
    TF Serving's "tensor parsing error"). It has what predict_util.cc's checks read (dtype, ndim, shape) and what
    decoding it allocates beyond the request's own bytes: nothing for numbers in tensor_content (read in place), the
    whole tensor for typed values (TF's FromProtoField repeats the last one to fill the shape: a 41-byte request can
    declare 256 MiB), each string's characters and STRING_BYTES."""

    name: str
    proto: tensor_pb2.TensorProto
    dims: list[int]
    dtype: np.dtype
    content: bytes  # read once: each read of a proto's bytes field is a copy
    expanded_bytes: int

    @classmethod
    def of(cls, name: str, proto: tensor_pb2.TensorProto) -> Declared:
        dims = [d.size for d in proto.tensor_shape.dim]
        if proto.dtype in NOT_REQUEST_DTYPES or proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
            raise parsing_error(name)
        try:
            dtype = np.dtype(tf.as_dtype(proto.dtype).as_numpy_dtype)
        except (TypeError, KeyError):  # not a DataType, or one without numpy's (DT_VARIANT_REF)
            raise parsing_error(name) from None
        elements, content = math.prod(dims), proto.tensor_content
        if content and proto.dtype in CONTENT_DTYPES:
            if len(content) != elements * dtype.itemsize:  # TF's Helper<T>::Decode wants it exact
                raise parsing_error(name)
            expanded = 0
        elif proto.dtype == types_pb2.DT_STRING:
            given = len(proto.string_val)
            filled = max(0, elements - given) * (len(proto.string_val[-1]) if given else 0)
            expanded = elements * STRING_BYTES + proto.ByteSize() + filled
        else:
            expanded = elements * dtype.itemsize
        return cls(name, proto, dims, dtype, content, expanded)

    @property
    def ndim(self) -> int:
        return len(self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dims)

    def decode(self) -> np.ndarray:
        """The tensor as numpy. Values past the shape are ignored, as TF's FromProtoField ignores them
        (make_ndarray would refuse them)."""
        if self.content and self.proto.dtype in CONTENT_DTYPES:  # the usual client's encoding, read without a copy
            return np.frombuffer(self.content, self.dtype).reshape(self.dims)
        proto = self.proto
        limit = math.prod(self.dims) * (2 if proto.dtype in COMPLEX_DTYPES else 1)
        surplus = [field.name for field, values in proto.ListFields()
                   if field.name.endswith("_val") and len(values) > limit]
        if surplus and not self.content:
            proto = tensor_pb2.TensorProto.FromString(proto.SerializeToString())  # the request's proto stays as sent
            for field in surplus:
                del getattr(proto, field)[limit:]
        try:
            return tf.make_ndarray(proto)
        except (TypeError, ValueError, KeyError, UnicodeDecodeError, OverflowError):
            raise parsing_error(self.name) from None


def parsing_error(name: str) -> InvalidArgument:
    return InvalidArgument(f"tensor parsing error: {name}")


class UndecodableRequests(grpc.ServerInterceptor):
    """A request whose bytes are not its message (corrupt wire format, a string field that is not UTF-8) is the
    client's mistake, INVALID_ARGUMENT: grpc would answer the deserializer's exception with UNKNOWN."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        deserialize, behavior = handler.request_deserializer, handler.unary_unary

        def lenient(data: bytes):
            try:
                return deserialize(data)
            except DecodeError as e:
                return e  # the method below answers it

        def answer(request, context):
            if isinstance(request, DecodeError):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Request cannot be parsed: {request}")
            return behavior(request, context)

        return handler._replace(request_deserializer=lenient, unary_unary=answer)


_received = threading.local()  # in_time: whether the call on this thread came before SIGTERM's refusals (CallThreads)


class CallThreads(ThreadPoolExecutor):
    """The threads gRPC calls run on (--grpc_max_threads). A call is received when grpc hands it to them, before a
    thread is free for it: SIGTERM's drain waits for it and answers it (ServingCore.receive)."""

    def __init__(self, core: ServingCore, threads: int):
        super().__init__(threads, thread_name_prefix="grpc")
        self.core = core

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._run, self.core.receive(), fn, args, kwargs)

    def _run(self, in_time: bool, fn, args, kwargs):
        _received.in_time = in_time
        try:
            return fn(*args, **kwargs)
        finally:
            self.core.received_done()


def add_services(server: grpc.Server, core: ServingCore, tensor_content: bool = False, remote_reload: bool = False,
                 base_path_root: Path | None = None, max_tensor_bytes: int = 0, one_of_processes: int = 1) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(core, tensor_content, max_tensor_bytes), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelService(core, remote_reload, base_path_root, one_of_processes), server)


def is_loopback(peer: str) -> bool:
    """Whether a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:/path") is on this machine."""
    kind, _, address = unquote(peer).partition(":")
    if kind == "unix":
        return True
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

