"""REST requests that arrive whole, read without aiohttp's per-request objects.

On one core a predict request cost the event loop ~290 us, ~60 of them aiohttp's: its parser's message, the
request, stream reader and writer, a task per request and the response's preparation (a bare protocol that reads the
same request and writes a fixed answer costs ~10). Under load a request's header block and body arrive in one read,
so a request that does, in the plainest HTTP/1.1, is read here into a `WholeRequest`: RestApi answers it through its
one handler, and `http_answer` writes that answer's bytes as aiohttp writes them (status line, headers, Date and
Server). What is read here, aiohttp's parser reads alike (tests/serving/test_rest_lane.py checks it against that
parser); everything else is aiohttp's, read and answered as before: a request split over reads or followed by
another in the read; a query string in its path; a header outside the grammar below; Transfer-Encoding,
Content-Encoding, Expect, Connection or Upgrade; anything but one Content-Length; no Host, or a second of a header
aiohttp allows once (SINGLETON_HEADERS). rest_connections.Handler decides when a connection may use this at all
(aiohttp has answered all it read there and holds nothing of another request).
"""
from __future__ import annotations

import re

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS

PREFIX = b"POST /v1/models/"  # the only requests taken here: model APIs (RestApi decides which route)
MAX_HEADERS = 32  # lines: far under aiohttp's limits (128 of 8,190 bytes), so it never takes what aiohttp refuses
MAX_HEADER_LINE = 4096
_REQUEST_LINE = re.compile(rb"POST (/v1/models/[A-Za-z0-9\-_~!$&'()*+,;=:@/.%]*) HTTP/1\.1")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*?)[ \t]*")
_LENGTH = re.compile(rb"0|[1-9][0-9]{0,14}")
_AIOHTTPS = frozenset({"transfer-encoding", "content-encoding", "expect", "connection", "upgrade",
                       "sec-websocket-key1"})  # (aiohttp refuses the last one)


class WholeRequest:
    """A POST whose header block and body came in one read: what RestApi, read_body and the error page read of
    aiohttp's BaseRequest (the rest of it is never asked for on a model API's route)."""

    method = "POST"

    def __init__(self, raw_path: str, headers: dict[str, str], body: bytes, protocol):
        self.raw_path = raw_path
        self.headers = _Headers(headers)
        self.content_length = len(body)
        self.content = _Received(body)
        self.protocol = protocol  # rest_connections.Handler: its transport and its arrival number

    @property
    def transport(self):
        return self.protocol.transport

    @property
    def remote(self) -> str | None:
        peername = self.transport.get_extra_info("peername") if self.transport is not None else None
        return peername[0] if peername else None


def whole_request(data: bytes, protocol, max_header_bytes: int) -> WholeRequest | None:
    """`data` as one whole request this module may read; None: aiohttp's to read (see the module's docstring), and
    a header block over `max_header_bytes` too (rest_connections answers it)."""
    if not data.startswith(PREFIX):
        return None
    end = data.find(b"\r\n\r\n", 0, max_header_bytes)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    found = _REQUEST_LINE.fullmatch(lines[0])
    if found is None or len(lines) > MAX_HEADERS + 1:
        return None
    target = found.group(1)
    headers, length = {}, None
    for line in lines[1:]:
        header = _HEADER.fullmatch(line) if len(line) <= MAX_HEADER_LINE else None
        if header is None:
            return None
        name = header.group(1).decode().lower()
        if name in _AIOHTTPS or (name in headers and name in SINGLETON_HEADERS):  # aiohttp refuses the duplicates
            return None
        if name == "content-length":
            if not _LENGTH.fullmatch(header.group(2)):
                return None
            length = int(header.group(2))
        headers.setdefault(name, header.group(2).decode())
    if length is None or "host" not in headers or len(data) != end + 4 + length:  # aiohttp: HTTP/1.1 needs a Host
        return None
    return WholeRequest(target.decode(), headers, data[end + 4:], protocol)


def http_answer(response: web.Response) -> bytes:
    """The bytes aiohttp writes for `response` to an HTTP/1.1 request (Response._start and _prepare_headers): its
    headers in order, then Content-Length, Date, Server, and Connection: close when it does not keep alive."""
    body = response.body or b""
    headers = dict(response.headers)
    headers.setdefault("Content-Length", str(len(body)))
    headers.setdefault("Date", rfc822_formatted_time())
    headers.setdefault("Server", SERVER_SOFTWARE)
    if response.keep_alive is False:
        headers.setdefault("Connection", "close")
    head = f"HTTP/1.1 {response.status} {response.reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


class _Headers:
    """The header block, looked up as aiohttp's CIMultiDict is: case-insensitively, the first value of a name."""

    def __init__(self, by_name: dict[str, str]):
        self._by_name = by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._by_name.get(name.lower(), default)


class _Received:
    """The body, all of it here: what read_body asks of aiohttp's StreamReader for a body that came whole."""

    def __init__(self, body: bytes):
        self._body = body

    def is_eof(self) -> bool:
        return True

    def read_nowait(self) -> bytes:
        return self._body
