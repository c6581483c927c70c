"""TF Serving's REST API (/v1/models/...) on aiohttp's low-level server.

Routing follows TF Serving's http_rest_api_util.cc: paths are matched case-insensitively, the
method suffix is then compared exactly (`:PREDICT` is a malformed request, 400), anything
outside /v1/ is libevent's 404 page. Routes are matched against the path with its query string,
as net_http's uri_path() gives it to TF Serving: `:predict?x=1` is a malformed request. A path is
matched once, into a `Route`, which authorization, dispatch and the request's metrics all read. The
body is parsed before the model is looked up, so a malformed body is a 400 even for an unknown model.
Errors are {"error": message} with the status TF Serving maps the error's code to.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from aiohttp.web_request import BaseRequest
from google.protobuf import json_format

from serving import codec, signatures
from serving.core import ServingCore
from serving.errors import (Cancelled, DeadlineExceeded, FailedPrecondition, InvalidArgument, PayloadTooLarge, RequestTimeout,
                            ResourceExhausted, Unauthenticated, Unavailable, as_serving_error)
from serving.servable import Servable

API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
PREDICTION_PATH = re.compile(  # ASCII: RE2's \d, which TF Serving uses, is 0-9 only
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE | re.ASCII)
NOT_FOUND_PAGE = (  # what TF Serving's libevent answers outside /v1/
    "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
)
JSON = "application/json"
LIBEVENT_CONTENT_TYPE = "text/html; charset=ISO-8859-1"  # libevent's default, on answers TF Serving gives no type
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                "Access-Control-Allow-Headers": "Content-Type"}
ERROR_HEADERS = {Unauthenticated: {"WWW-Authenticate": "Bearer"}, ResourceExhausted: {"Retry-After": "1"}}
INT64_MAX = 2**63 - 1
METRICS = "metrics"  # the route of the Prometheus page (--monitoring_config_file)
LARGE_BODY_BYTES = 1 << 20
_LIBC = ctypes.CDLL(None)


def release_freed_memory() -> None:
    """Free what a large request left: its reference cycles (a full collection, ~30 ms: an error raised through an
    awaited future is a cycle holding the request's data, and the server's gc thresholds make full collections
    rare), then give the memory back to the system (glibc keeps it in its arenas: a 250 MB body left the server
    2.9 GB larger for good)."""
    gc.collect()
    if hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


class RestApi:
    def __init__(self, core: ServingCore, *, timeout_s: float | None, max_body_bytes: int,
                 metrics_path: str | None, enable_cors: bool, idle_timeout_s: float = 30.0,
                 max_connections: int = 0):
        self.core = core
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        self.enable_cors = enable_cors
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.draining = False  # shutting down: status (readiness) answers 503, requests in flight finish
        self._server: web.Server | None = None
        self._large_bodies = ThreadPoolExecutor(1, thread_name_prefix="large-body")

    def make_server(self) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for loop.create_server. A connection that has not sent a whole request header
        within `idle_timeout_s` (idle keep-alive, or headers trickling in) is closed; past `max_connections`
        a new connection gets a 503 and is closed, so idle sockets cannot exhaust the server's descriptors."""
        def request_factory(message, payload, protocol, writer, task):
            return BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=self.max_body_bytes)

        self._server = web.Server(self._handle, request_factory=request_factory, access_log=None,
                                  keepalive_timeout=self.idle_timeout_s)

        def protocol_factory() -> asyncio.Protocol:
            if self.max_connections and len(self._server.connections) >= self.max_connections:
                return Refuse(codec.format_error_response(
                    f"Too many connections (limit {self.max_connections}, --rest_api_max_connections); retry later"))
            return self._server()

        return protocol_factory

    async def drain(self, timeout_s: float) -> None:
        """After the listener closed: wait for the requests in flight (ServingCore counts them, both front ends; at
        most `timeout_s`), then close the connections left, idle keep-alive ones included."""
        deadline = time.monotonic() + timeout_s
        while self.core.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._server is not None:  # what is left is idle (or past the deadline): a short grace, not the rest
            await self._server.shutdown(0.2)

    async def _handle(self, request: BaseRequest) -> web.Response:
        route = match(request, self.metrics_path)
        if route is None:
            return web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html")
        started = time.perf_counter()
        headers = {"Content-Type": JSON, **(CORS_HEADERS if self.enable_cors else {})}
        servable, status, code = None, 200, "OK"
        try:
            with self.core.admitted():
                self._authorize(request, route)
                if route.api == METRICS:
                    return self._metrics(route.path)
                body = await self._read_body(request)
                if request.method == "OPTIONS":
                    answer = self._preflight(request)
                else:
                    answer, servable = await self._answer(route, body)
        except Exception as e:  # every error becomes an answer; the server keeps serving
            error = as_serving_error(e, f"REST {route.method} {route.path[:200]}")
            answer, status, code = codec.format_error_response(error.message), error.http_status, error.code.name
            headers.update(ERROR_HEADERS.get(type(error), {}))
            del error  # it holds this frame (its traceback) and this frame it: a cycle keeping the request's
            # data (a large document) alive until a full collection, which the server's gc settings make rare
        if request.method == "OPTIONS":  # http_server.cc answers a preflight itself: no body, no type of its own
            answer, headers["Content-Type"] = b"", LIBEVENT_CONTENT_TYPE
        version = str(servable.version) if servable is not None else ""
        self.core.record(route.model, version, route.api, "REST", code, time.perf_counter() - started)
        response = web.Response(body=answer, status=status, headers=headers)
        if status == RequestTimeout.http_status:  # the rest of that body may come late or never: answer and hang
            response.force_close()  # up, instead of lingering (aiohttp reads on for 10 s to reuse the connection)
            await response.prepare(request)
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response

    def _authorize(self, request: BaseRequest, route: Route) -> None:
        """With --auth_token_file: the caller's token, checked against what the route asks for, before the body is
        read (so unauthenticated clients cannot make the server read and parse bodies); a malformed route asks for
        what status does. CORS preflights carry no credentials, by the Fetch standard: they pass."""
        if not self.core.authenticates or route.method == "OPTIONS":
            return
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        self.core.authorize(request.headers.get("Authorization"), route.api.lower() or "status", [route.model], peer,
                            f"REST {route.method} {route.path[:200]}")

    async def _read_body(self, request: BaseRequest) -> bytes:
        """The body, decompressed (Content-Encoding gzip, deflate, br) with the limit applied to what it decompresses
        to, so a small compressed body cannot expand past it."""
        try:
            return await asyncio.wait_for(request.read(), self.timeout_s)
        except asyncio.TimeoutError:  # a stalled or trickling body must not hold its connection for ever
            raise RequestTimeout(f"Request body not received within {self.timeout_s * 1000:.0f} ms "
                                 f"(--rest_api_timeout_in_ms)") from None
        except web.HTTPRequestEntityTooLarge:
            raise PayloadTooLarge(
                f"Request body is larger than the limit of {self.max_body_bytes} bytes (--rest_api_max_body_bytes)"
                + (" once decompressed" if request.headers.get("Content-Encoding") else "")) from None
        except ConnectionResetError:
            raise Cancelled("The client closed the connection before sending the whole body") from None
        except RequestPayloadError as e:
            encoding = request.headers.get("Content-Encoding", "")[:40]
            raise InvalidArgument(f"Request body cannot be read as Content-Encoding {encoding!r}: "
                                  f"{str(e.__cause__ or e).splitlines()[-1].strip()[:200]}") from None

    async def _answer(self, route: Route, body: bytes) -> tuple[bytes, Servable | None]:
        """The answer to a route, and the servable that gave it (None for status, which needs none)."""
        try:
            return await asyncio.wait_for(self._dispatch(route, body), self.timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"Deadline exceeded: the request took longer than {self.timeout_s * 1000:.0f} ms "
                                   f"(--rest_api_timeout_in_ms)") from None

    def _metrics(self, path: str) -> web.Response:
        """http_server.cc ProcessPrometheusRequest: found by the path alone, then refused unless the path with its
        query string is the metrics path (a scraper's ?query gets a 400)."""
        if path != self.metrics_path:
            return web.Response(status=400, body=f"Unexpected path: {path}. Should be {self.metrics_path}".encode(),
                                content_type="text/plain")
        return web.Response(body=self.core.metrics_text(), content_type="text/plain")

    def _preflight(self, request: BaseRequest) -> bytes:
        if re.search(r"https?://", request.headers.get("Origin", "")):
            return b""
        raise FailedPrecondition("Origin header is missing in CORS preflight")

    async def _dispatch(self, route: Route, body: bytes) -> tuple[bytes, Servable | None]:
        if route.problem:
            raise InvalidArgument(route.problem)
        if route.api == "predict":
            return await self._predict(route, body)
        if route.api in ("classify", "regress"):
            return await self._classify_or_regress(route, body)
        if route.api in ("status", "metadata") and self.draining:  # readiness probes see it first: load balancers
            raise Unavailable("Server is shutting down")  # stop sending requests here
        if route.api == "metadata":
            servable = self._servable(route)
            return self._metadata(servable), servable
        if route.api == "status":
            return self._status(route), None
        raise InvalidArgument(f"Malformed request: {route.method} {route.path}")

    async def _predict(self, route: Route, body: bytes) -> tuple[bytes, Servable]:
        async with self._codec(body) as run:
            document = await run(codec.decode_predict_json, body)
            signature = codec.signature_name(document) or signatures.DEFAULT_SIGNATURE
            servable = self._servable(route)
            inputs, row_format = await run(codec.parse_predict_request, document,
                                           self.core.predict_inputs(servable, signature))
            del document
            outputs = await self.core.predict(servable, signature, inputs)
            return await run(codec.format_predict_response, outputs, row_format), servable

    async def _classify_or_regress(self, route: Route, body: bytes) -> tuple[bytes, Servable]:
        async with self._codec(body) as run:
            examples, signature_name = await run(lambda: codec.parse_examples_request(codec.decode_json(body)))
            servable = self._servable(route)
            if route.api == "classify":
                signature = self.core.classify_signature(servable, signature_name)
                classes, scores = await self.core.classify(servable, signature, examples)
                return await run(codec.format_classify_response, classes, scores), servable
            signature = self.core.regress_signature(servable, signature_name)
            values = await self.core.regress(servable, signature, examples)
            return await run(codec.format_regress_response, values), servable

    @contextlib.asynccontextmanager
    async def _codec(self, body: bytes):
        """Where a request's JSON is parsed and its answer formatted: inline for usual bodies; for large ones (a
        250 MB body takes seconds) on the one large-body thread, so the event loop keeps answering the others and
        one large document at a time is in memory; afterwards the freed memory goes back to the system."""
        if len(body) < LARGE_BODY_BYTES:
            async def inline(work, *args):
                return work(*args)

            yield inline
            return
        loop = asyncio.get_running_loop()

        async def off_loop(work, *args):
            return await loop.run_in_executor(self._large_bodies, work, *args)

        try:
            yield off_loop
        finally:
            await loop.run_in_executor(self._large_bodies, release_freed_memory)

    def _servable(self, route: Route) -> Servable:
        return self.core.servable(route.model, route.version, route.label)

    def _status(self, route: Route) -> bytes:
        response = self.core.status(route.model, route.version)
        return json_format.MessageToJson(response, indent=1, always_print_fields_with_no_presence=True).encode()

    def _metadata(self, servable: Servable) -> bytes:
        """TF Serving's hand-assembled metadata JSON: model_spec, then metadata.signature_def."""
        spec, signature_defs = self.core.metadata(servable)
        options = dict(indent=1, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
        spec_json = json_format.MessageToJson(spec, **options)
        signature_json = json_format.MessageToJson(signature_defs, **options)
        return ('{\n"model_spec":' + spec_json + ',\n"metadata": {"signature_def": ' + signature_json + "}\n}\n").encode()


class QuietClientErrors(logging.Filter):
    """aiohttp logs a traceback at ERROR for every request that does not parse as HTTP (it answered 400): the
    client's mistake, and a way for any client to flood the log. One line at INFO is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "%s: %s", (record.getMessage(), str(error).replace("\n", " ")[:200]), None, None)
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class Refuse(asyncio.Protocol):
    """A connection over the limit: one 503 with `body`, then closed."""

    def __init__(self, body: bytes):
        self.body = body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
        transport.close()


@dataclass(frozen=True)
class Route:
    """What a request asks for, as its method and path say: matched once, then read by authorization, dispatch
    and the request's metrics."""

    method: str
    path: str  # with its query string: what TF Serving routes by, and quotes in "Malformed request"
    api: str = ""  # predict, classify or regress as the URL spells it (":PREDICT" is malformed), status, metadata,
    #                the metrics page; "" where no route matches (malformed)
    model: str = ""
    version: int | None = None
    label: str | None = None
    problem: str = ""  # why the URL's model, version or label cannot be used: a 400, answered after authorization


def match(request: BaseRequest, metrics_path: str | None) -> Route | None:
    """The request's route; None outside /v1/ and the metrics page (libevent's 404 page). The metrics page is
    found by the path without its query string, as http_server.cc finds it."""
    method, path = request.method, request.raw_path  # with its query string: net_http's uri_path()
    if metrics_path is not None and request.rel_url.raw_path == metrics_path:
        return Route(method, path, METRICS)
    if not API_PATH.fullmatch(path):
        return None
    if method == "POST" and (found := PREDICTION_PATH.fullmatch(path)):
        name, version, label, api = found.groups()
    elif method == "GET" and (found := STATUS_PATH.fullmatch(path)):
        name, version, label, subresource = found.groups()
        api = "metadata" if subresource else "status"
    else:
        return Route(method, path)
    try:
        return Route(method, path, api, *_model_spec(name, version, label))
    except InvalidArgument as e:  # the model as the URL names it (undecodable bytes replaced), for authorization
        return Route(method, path, api, unquote(name or ""), problem=e.message)


def _model_spec(name: str | None, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
    """Decode the URL parts the regex captured, with TF Serving's errors for bad ones, in its order."""
    if version is not None:
        if len(version.lstrip("0")) > 19 or int(version) > INT64_MAX:  # int() refuses more than 4,300 digits
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    name = _decode(name, "model name") if name is not None else ""
    if label is not None:
        label = _decode(label, "model version label")
    if version is not None and label is not None:
        raise InvalidArgument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    if not name:
        raise InvalidArgument("Missing model name in request.")
    return name, version, label


def _decode(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"Failed to decode {what}:{text}") from None

