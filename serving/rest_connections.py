"""What the REST port's connections may hold, whoever opens them: their number, their TLS handshake, their header
bytes, and what the server says and logs about HTTP it cannot parse.

- Connections are counted from accept, a TLS one before its handshake: at most --rest_api_max_connections. Past
  it a clear-text connection gets a 503 and is closed; a TLS one is closed at once (a 503 would need a handshake).
- TLS is handshaken here, after accept (loop.start_tls), within the idle timeout: a connection that never sends a
  ClientHello is closed then, not after asyncio's 60 s, and what its handshake held is freed then (not by the
  collector, much later: a failed handshake is a reference cycle holding a 256 KiB buffer).
- Once a burst of connections has closed (RELEASE_AFTER_CLOSED, then RELEASE_QUIET_S without a close), what they
  held goes back to the system (memory.release, off the event loop): glibc kept it, ~280 KiB a TLS connection.
- A request's header block may hold MAX_HEADER_BYTES, counted as its bytes arrive: past it 431 and the connection
  is closed, so an unfinished block holds that much at most (aiohttp accepts 128 lines of 8 KiB: ~1 MiB).
- HTTP that does not parse gets a 400 naming the kind of mistake, never the request's text (aiohttp's quotes the
  line: an Authorization header with a stray CR put the token in the answer and the log); one line is logged.
- A model API's request that arrives whole, once aiohttp has answered all it parsed on its connection and holds
  nothing of another, is read by rest_lane.py instead, and its answer written here; what arrives meanwhile waits
  for that answer, so a connection's answers keep its requests' order.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from serving import codec, memory
from serving.rest_lane import WholeRequest, http_answer, whole_request

log = logging.getLogger("serving")

MAX_HEADER_BYTES = 64 * 1024  # Envoy's default is 60 KiB
RELEASE_AFTER_CLOSED = 128  # connections closed since memory was last released: a burst worth a release...
RELEASE_QUIET_S = 0.5  # ...once none has closed for this long (so never under steady traffic, which reuses it)


class Connections:
    """The REST port's connections: `protocol_factory` for loop.create_server (without its own ssl=)."""

    def __init__(self, server: web.Server, max_connections: int, idle_timeout_s: float,
                 tls: ssl.SSLContext | None, arrived: Callable[[], int]):
        self.server = server
        self.arrived = arrived  # numbers each data event (ServingCore.arrived)
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.tls = tls
        self.open = 0
        self.closed_since_release = 0
        self._release: asyncio.TimerHandle | None = None

    def protocol_factory(self) -> asyncio.Protocol:
        return Accepted(self)

    def closed(self) -> None:
        """One connection counted from accept has closed; after a burst of them, a release once closes pause."""
        self.open -= 1
        self.closed_since_release += 1
        if self.closed_since_release >= RELEASE_AFTER_CLOSED:
            if self._release is not None:
                self._release.cancel()
            self._release = asyncio.get_running_loop().call_later(RELEASE_QUIET_S, self._release_memory)

    def _release_memory(self) -> None:
        self._release, self.closed_since_release = None, 0
        memory.release_in_background()


class Accepted(asyncio.Protocol):
    """One accepted TCP connection: counted until it closes; with TLS, handshaken first; then aiohttp's handler
    gets what it carries."""

    def __init__(self, connections: Connections):
        self.connections = connections
        self.handler: RequestHandler | None = None
        self.counted = False
        self.lost = False
        self.early: list[bytes] = []  # what TLS delivered before start_tls returned (one loop iteration's worth)

    def connection_made(self, transport: asyncio.Transport) -> None:
        connections = self.connections
        if connections.max_connections and connections.open >= connections.max_connections:
            if connections.tls is None:
                message = (f"Too many connections (limit {connections.max_connections}, --rest_api_max_connections); "
                           f"retry later")
                transport.write(_answer(503, "Service Unavailable", message, b"Retry-After: 1\r\n"))
            transport.close()
            return
        connections.open += 1
        self.counted = True
        if connections.tls is None:
            self._serve(transport)
        else:
            asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, transport: asyncio.Transport) -> None:
        try:
            secured = await asyncio.get_running_loop().start_tls(
                transport, self, self.connections.tls, server_side=True,
                ssl_handshake_timeout=self.connections.idle_timeout_s or None)
        except (OSError, asyncio.TimeoutError, ConnectionError) as e:  # ssl.SSLError is an OSError
            e.__traceback__ = None  # its frames and start_tls's waiter, which holds it: a cycle keeping the TLS state
            transport.close()
            self._uncount()
            return
        self._serve(secured)

    def _serve(self, transport: asyncio.Transport) -> None:
        if self.lost:
            return
        self.handler = self.connections.server()
        self.handler.connection_made(transport)
        for data in self.early:
            self.data_received(data)
        self.early.clear()

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            self.early.append(data)
        else:
            self.handler.arrival = self.connections.arrived()
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._uncount()
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.connections.closed()


AnswerWhole = Callable[[WholeRequest], Coroutine[Any, Any, web.Response] | None]


class Handler(RequestHandler):
    """aiohttp's HTTP/1.1 handler, with the header cap, value-free answers to malformed HTTP, and whole requests
    answered without aiohttp's request objects (rest_lane.py)."""

    _header_bytes = 0  # of the header block arriving, counted before the parser gets them
    _tail = b""  # the last bytes counted: a blank line split between two reads is still found
    _last_payload = None  # the body of the last request parsed: while it arrives, bytes are no header
    arrival = 0  # the number of this connection's last data event (Connections.arrived)
    _answering: asyncio.Task | None = None  # a whole request's answer being made; what arrives meanwhile is _held,
    _holding = False  # and reading paused until no answer is being made
    _aiohttps_answered = 0  # the requests aiohttp parsed (its _request_count) and answered

    def __init__(self, *args: Any, answer_whole: AnswerWhole, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._answer_whole = answer_whole
        self._held: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        if self._answering is not None:
            if not self._holding:
                self._holding = True
                self._pause_transport_reading()
            self._held.append(data)
            return
        if self._waits_with_nothing_held():
            request = whole_request(data, self, MAX_HEADER_BYTES)
            answer = self._answer_whole(request) if request is not None else None
            if answer is not None:
                self._answering = self._loop.create_task(self._write_answer(request, answer))
                return
        self._parse(data)

    def _waits_with_nothing_held(self) -> bool:
        """Whether aiohttp has answered every request it parsed on this connection and holds nothing of another:
        what is read here now comes next in the connection's order. (Not whether its loop waits for a request: a
        closed-loop client's next one often comes before that loop has come round, and would stay aiohttp's.)"""
        return (self._aiohttps_answered == self._request_count and self._header_bytes == 0
                and (self._last_payload is None or self._last_payload.is_eof()) and self._keepalive
                and not self._close and not self._force_close)

    async def _handle_request(self, request, start_time, request_handler):
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._aiohttps_answered += 1

    async def _write_answer(self, request: WholeRequest, answer: Coroutine[Any, Any, web.Response]) -> None:
        """A whole request's answer, written as aiohttp writes one (start() and finish_response): an error the
        handler let through is a 500 that closes the connection; a client that does not read its answers is not
        read from either (aiohttp's drain); the idle timeout starts again after the answer. Then what arrived
        meanwhile is read, and reading resumes."""
        try:
            try:
                response = await answer
            except Exception as e:
                response = self.handle_error(request, 500, e)
            if self.transport is not None:
                self.transport.write(http_answer(response))
                if response.keep_alive is False:
                    self.force_close()
                else:
                    with contextlib.suppress(ConnectionError):  # lost while its answer waited to be sent
                        await self._drain_helper()
        finally:
            self._answering = None
        if self._keepalive and not self._close and not self._force_close:
            close_time = self._loop.time() + self._keepalive_timeout
            self._next_keepalive_close_time = close_time
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        held, self._held = self._held, []
        for data in held:
            self.data_received(data)
        if self._holding and self._answering is None:  # (else the answer the held bytes began resumes it)
            self._holding = False
            if not (self._reading_paused or self._buffer_paused):  # unless aiohttp's own flow control holds it
                self._resume_transport_reading()

    def _process_keepalive(self) -> None:
        if self._answering is not None:  # not idle: the answer's end schedules the idle timeout again
            self._keepalive_handle = None
            return
        super()._process_keepalive()

    def _parse(self, data: bytes) -> None:
        if self._last_payload is None or self._last_payload.is_eof():  # between requests: a header arriving
            end = (self._tail + data).find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = data[-3:]
            if self._header_bytes > MAX_HEADER_BYTES:
                if self.transport is not None:
                    self.transport.write(_answer(431, "Request Header Fields Too Large",
                                                 f"Request headers are larger than {MAX_HEADER_BYTES} bytes"))
                self.force_close()
                return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._header_bytes, self._tail = 0, b""
            self._last_payload = self._messages[-1][1] if self._messages else None

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.Response:
        kind = type(exc).__name__ if exc is not None else "error"
        text = (f"Malformed HTTP request ({kind}): it cannot be read as HTTP/1.1; the request is not quoted back"
                if status < 500 else "Internal error; the server's log has the details")
        log.info("REST answered %d to %s: %s", status, request.remote, kind)
        response = web.Response(status=status, body=codec.format_error_response(text), content_type="application/json")
        response.force_close()
        return response


class HttpServer(web.Server):
    """aiohttp's low-level server, making `Handler`s."""

    def __call__(self) -> Handler:
        return Handler(self, loop=self._loop, **self._kwargs)


def _answer(status: int, reason: str, message: str, headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer with a JSON error, written before aiohttp has a request to answer; then close."""
    body = codec.format_error_response(message)
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nConnection: close\r\n".encode()
            + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body)
