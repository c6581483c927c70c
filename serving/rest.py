"""TF Serving's REST API (/v1/models/...) on aiohttp's low-level server.

Routing follows TF Serving's http_rest_api_util.cc: paths are matched case-insensitively, the
method suffix is then compared exactly (`:PREDICT` is a malformed request, 400), anything
outside /v1/ is libevent's 404 page. Routes are matched against the path with its query string,
as net_http's uri_path() gives it to TF Serving: `:predict?x=1` is a malformed request. A path is
matched once, into a `Route`, which authorization, dispatch and the request's metrics all read. The
body is parsed before the model is looked up, so a malformed body is a 400 even for an unknown model.
Errors are {"error": message} with the status TF Serving maps the error's code to; a version that is no int64 is a
400 with no body (ParseModelInfo's error, returned before TF Serving writes one).

What a request may cost before it is refused: a request is authorized before anything else; only a request that
runs a model (predict, classify, regress) has its body read (rest_body.py) and takes one of the slots
--max_requests_in_flight counts; CORS preflights, status, metadata, metrics and paths no route matches are answered
without reading a byte of a body. What a connection may hold is rest_connections.py's; a model request that arrives
whole is read by rest_lane.py and answered here by the same handler (`answer_whole`).
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from aiohttp import web
from aiohttp.web_request import BaseRequest
from google.protobuf import json_format
from tensorflow_serving.apis import model_pb2

from serving import codec, signatures
from serving.core import LARGE_REQUEST_BYTES, ServingCore
from serving.deadlines import Deadlines
from serving.errors import (DeadlineExceeded, FailedPrecondition, InvalidArgument, RequestTimeout, ResourceExhausted,
                            Unauthenticated, Unavailable, as_serving_error)
from serving.rest_body import read_body
from serving.rest_connections import Connections, HttpServer
from serving.rest_lane import WholeRequest
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
MODEL_APIS = ("predict", "classify", "regress")  # the routes whose bodies are read, and that take a slot

class RestApi:
    def __init__(self, core: ServingCore, *, timeout_s: float | None, max_body_bytes: int,
                 metrics_path: str | None, enable_cors: bool, idle_timeout_s: float = 30.0,
                 max_connections: int = 0, tls: ssl.SSLContext | None = None):
        self.core = core
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.metrics_path = metrics_path
        self.enable_cors = enable_cors
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.tls = tls
        self._deadlines = Deadlines(timeout_s) if timeout_s else None
        self._server: web.Server | None = None

    def make_server(self) -> Callable[[], asyncio.Protocol]:
        """The protocol factory for loop.create_server (with no ssl= of its own: TLS is rest_connections.py's). A
        connection that has not sent a whole request header within `idle_timeout_s` (idle keep-alive, or headers
        trickling in) is closed; a body left unread closes its connection (lingering_time 0: aiohttp would read
        on for 10 s); bodies are read and inflated by rest_body.py (auto_decompress off)."""
        self._server = HttpServer(self._handle, access_log=None, keepalive_timeout=self.idle_timeout_s,
                                  lingering_time=0, auto_decompress=False, answer_whole=self.answer_whole)
        return Connections(self._server, self.max_connections, self.idle_timeout_s, self.tls,
                           self.core.arrived).protocol_factory

    async def close(self) -> None:
        """After the drain (ServingCore.drain): close the connections left, idle keep-alive ones included, with a
        short grace for answers being written."""
        if self._server is not None:
            await self._server.shutdown(0.2)

    async def _handle(self, request: BaseRequest) -> web.Response:
        route = match(request.method, request.raw_path, request.rel_url.raw_path, self.metrics_path)
        if route is None:
            return _unread(request, web.Response(status=404, text=NOT_FOUND_PAGE, content_type="text/html"))
        response = await self._respond(request, route)
        if response.status == RequestTimeout.http_status:  # the rest of that body may come late or never: answer
            await response.prepare(request)  # and hang up
            await response.write_eof()
            if request.transport is not None:
                request.transport.close()
        return response

    def answer_whole(self, request: WholeRequest) -> Coroutine[Any, Any, web.Response] | None:
        """The answer to a request that arrived whole (rest_lane.py), when its route is a model API's; None: one for
        aiohttp to answer. Its body is all here, so it cannot time out (408)."""
        route = match(request.method, request.raw_path, request.raw_path, self.metrics_path)
        if route is None or route.api not in MODEL_APIS:
            return None
        return self._respond(request, route)

    async def _respond(self, request: BaseRequest | WholeRequest, route: Route) -> web.Response:
        started = time.perf_counter()
        headers = {"Content-Type": JSON, **(CORS_HEADERS if self.enable_cors else {})}
        servable, status, code = None, 200, "OK"
        try:
            self._authorize(request, route)
            if request.method == "OPTIONS":
                answer = self._preflight(request)
            elif route.api == METRICS:
                return _unread(request, self._metrics(route.path))
            elif route.api in MODEL_APIS:
                with self.core.admitted(arrival=request.protocol.arrival):
                    self.core.bodies_arriving += 1
                    try:
                        body = await read_body(request, self.max_body_bytes, self.timeout_s)
                    finally:
                        self.core.bodies_arriving -= 1
                    answer, servable = await self._answer(route, body)
            else:
                answer, servable = await self._answer(route, b"")
        except Exception as e:  # every error becomes an answer; the server keeps serving
            error = as_serving_error(e, f"REST {route.method} {route.path[:200]}")
            answer = b"" if isinstance(error, UnparsedVersion) else codec.format_error_response(error.message)
            status, code = error.http_status, error.code.name
            headers.update(ERROR_HEADERS.get(type(error), {}))
            del error  # it holds this frame (its traceback) and this frame it: a cycle keeping the request's
            # data (a large document) alive until a full collection, which the server's gc settings make rare
        if request.method == "OPTIONS":  # http_server.cc answers a preflight itself: no body, no type of its own
            answer, headers["Content-Type"] = b"", LIBEVENT_CONTENT_TYPE
        version = str(servable.version) if servable is not None else ""
        self.core.record(route.model, version, route.api, "REST", code, time.perf_counter() - started)
        return _unread(request, web.Response(body=answer, status=status, headers=headers))

    def _authorize(self, request: BaseRequest | WholeRequest, route: Route) -> None:
        """With --auth_token_file: the caller's token, checked against what the route asks for, before anything else
        (so unauthenticated clients cannot make the server read bodies or take slots); a malformed route asks for
        what status does. CORS preflights carry no credentials, by the Fetch standard: they pass."""
        if not self.core.authenticates or route.method == "OPTIONS":
            return
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        self.core.authorize(request.headers.get("Authorization"), route.api.lower() or "status", [route.model], peer,
                            f"REST {route.method} {route.path[:200]}")

    async def _answer(self, route: Route, body: bytes) -> tuple[bytes, Servable | None]:
        """The answer to a route, and the servable that gave it (None for status, which needs none)."""
        try:
            with self._deadlines.within() if self._deadlines else contextlib.nullcontext():  # not wait_for: its task
                return await self._dispatch(route, body)  # and a failure's traceback were a cycle keeping the
            #                                             request's data (a large body's tensors)
        except TimeoutError:
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
            raise route.problem_type(route.problem)
        if route.api == "predict":
            return await self._predict(route, body)
        if route.api in ("classify", "regress"):
            return await self._classify_or_regress(route, body)
        if route.api in ("status", "metadata") and self.core.shutting_down:  # readiness probes see it first: balancers
            raise Unavailable("Server is shutting down")  # stop sending requests here
        if route.api == "metadata":
            servable = self._servable(route)
            return self._metadata(servable), servable
        if route.api == "status":
            return self._status(route), None
        raise InvalidArgument(f"Malformed request: {route.method} {route.path}")

    async def _predict(self, route: Route, body: bytes) -> tuple[bytes, Servable]:
        async with self.core.decoding(codec.parse_cost(body, LARGE_REQUEST_BYTES)) as run:
            document = await run(codec.decode_predict_json, body)
            signature_name = codec.signature_name(document)
            signature = signature_name or signatures.DEFAULT_SIGNATURE
            servable = self._servable(route)
            inputs, row_format = await run(codec.parse_predict_request, document,
                                           self.core.predict_inputs(servable, signature))
            del document
            outputs = await self.core.predict(servable, signature, inputs, requested=route.model_spec(signature_name))
            return await run(codec.format_predict_response, outputs, row_format), servable

    async def _classify_or_regress(self, route: Route, body: bytes) -> tuple[bytes, Servable]:
        async with self.core.decoding(codec.parse_cost(body, LARGE_REQUEST_BYTES)) as run:
            examples, signature_name = await run(lambda: codec.parse_examples_request(codec.decode_json(body)))
            servable = self._servable(route)
            requested = route.model_spec(signature_name)  # after the body and the model, as TF Serving checks them
            if route.api == "classify":
                signature = self.core.classify_signature(servable, signature_name)
                classes, scores = await self.core.classify(servable, signature, examples, requested)
                return await run(codec.format_classify_response, classes, scores), servable
            signature = self.core.regress_signature(servable, signature_name)
            values = await self.core.regress(servable, signature, examples, requested)
            return await run(codec.format_regress_response, values), servable

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


def _unread(request: BaseRequest | WholeRequest, response: web.Response) -> web.Response:
    """The response, saying the connection closes after it when the request's body was not all received (it is
    not read: aiohttp closes such a connection, lingering_time 0)."""
    if not request.content.is_eof():
        response.force_close()
    return response


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
    problem_type: type[InvalidArgument] = InvalidArgument  # UnparsedVersion: answered with no body

    def model_spec(self, signature_name: str | None) -> model_pb2.ModelSpec:
        """The ModelSpec a gRPC request for the same model, version or label and signature would send."""
        signature_name = (signature_name or "").encode("utf-8", "replace").decode()  # a body's invalid UTF-8
        spec = model_pb2.ModelSpec(name=self.model, signature_name=signature_name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        return spec


def match(method: str, path: str, path_without_query: str, metrics_path: str | None) -> Route | None:
    """The route of a request for `path` (with its query string: net_http's uri_path()); None outside /v1/ and the
    metrics page (libevent's 404 page). The metrics page is found by the path without its query string, as
    http_server.cc finds it."""
    if metrics_path is not None and path_without_query == metrics_path:
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
        return Route(method, path, api, unquote(name or ""), problem=e.message, problem_type=type(e))


def _model_spec(name: str | None, version: str | None, label: str | None) -> tuple[str, int | None, str | None]:
    """Decode the URL parts the regex captured, with TF Serving's errors for bad ones, in its order."""
    if version is not None:
        if len(version.lstrip("0")) > 19 or int(version) > INT64_MAX:  # int() refuses more than 4,300 digits
            raise UnparsedVersion(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    name = _decode(name, "model name") if name is not None else ""
    if label is not None:
        label = _decode(label, "model version label")
    if version is not None and label is not None:
        raise InvalidArgument(f"Both model version ({version}) and model version label ({label}) cannot be supplied.")
    if not name:
        raise InvalidArgument("Missing model name in request.")
    return name, version, label


class UnparsedVersion(InvalidArgument):
    """A version in the URL that does not fit in int64: ParseModelInfo's error (http_rest_api_util.cc), which
    ProcessRequest returns before MakeJsonFromStatus writes a body, so TF Serving's 400 has none (its log and
    metrics have the message). The one ParseModelInfo error it gives: its name and label decoding (curl) cannot
    fail, while ours refuses bytes that are not UTF-8, with a body that says so."""


def _decode(text: str, what: str) -> str:
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"Failed to decode {what}:{text}") from None

