"""Requests that arrive whole (serving/rest_lane.py): which ones are read without aiohttp and which are left to it;
that their answers are aiohttp's byte for byte (but the Date); that a connection's answers keep its requests' order
while one is answered; that the idle timeout still closes a connection after one. The server runs in process (the
real RestApi, ServingCore and half_plus_two), its `answer_whole` noting the requests it was given."""
from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp.http_parser import HttpRequestParser
from hostile import request as http_request
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.auth import Access
from serving.batching import BatchingParameters
from serving.core import ServingCore
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.model_config import single_model_config
from serving.rest import RestApi
from serving.rest_connections import HttpServer
from serving.rest_lane import MAX_HEADER_LINE, MAX_HEADERS, whole_request

TOKEN = "t" * 24 + "-predict"
PREDICT = "/v1/models/half_plus_two:predict"
BODY = b'{"instances": [1.0, 2.0]}'


def plain(path: str = PREDICT, body: bytes = BODY, headers: dict[str, str] | None = None, line: bytes = b"") -> bytes:
    """A whole request as the lane reads it, with `headers` added (and `line`, raw, after them)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return head.encode() + line + b"Content-Length: %d\r\n\r\n" % len(body) + body


def test_a_whole_request_in_the_plainest_http_is_read():
    request = whole_request(plain(headers={"Authorization": f"Bearer {TOKEN}", "X-A": "1", "x-a": "2"}), None, 65536)
    assert (request.method, request.raw_path, request.content_length) == ("POST", PREDICT, len(BODY))
    assert request.content.is_eof() and request.content.read_nowait() == BODY
    assert request.headers.get("authorization") == request.headers.get("AUTHORIZATION") == f"Bearer {TOKEN}"
    assert request.headers.get("X-A") == "1" and request.headers.get("Expect", "") == ""  # as CIMultiDict.get


@pytest.mark.parametrize("data", [
    plain()[:-1],  # its body not all here
    plain() + plain(),  # a second request in the same read
    plain(PREDICT + "?x=1"),  # match() reads the path without its query string from yarl
    plain().replace(b"HTTP/1.1", b"HTTP/1.0"), plain().replace(b"POST", b"PUT"), b"GET " + plain()[5:],
    *[plain(headers={name: value}) for name, value in [("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip"),
                                                       ("Expect", "100-continue"), ("Connection", "keep-alive"),
                                                       ("upgrade", "h2c"), ("Content-Length", str(len(BODY)))]],
    plain(line=b"Host : 127.0.0.1\r\n"), plain(line=b" folded\r\n"), plain(line=b"X-Bytes: \xff\r\n"),
    plain().replace(b"Content-Length: ", b"Content-Length: +"),
    plain().replace(b"Content-Length: ", b"Content-Length: 0"),
    plain().replace(b"Content-Length", b"X-Length"),
    plain(headers={"X-Long": "a" * MAX_HEADER_LINE}), plain(headers={f"X-{i}": "1" for i in range(MAX_HEADERS)}),
], ids=lambda data: re.sub(r"[^\w:./?%+-]+", " ", data[:90].decode("latin-1")).strip())
def test_anything_else_is_left_to_aiohttp(data):
    assert whole_request(data, None, 65536) is None


NAMES = st.sampled_from(["Host", "host", "Content-Type", "User-Agent", "Authorization", "X-A", "x-a", "Server", "ETag",
                         "Max-Forwards", "Content-Range", "Sec-WebSocket-Key1", "Cookie", "Date", "Content-Length"])
TOKENS = st.from_regex(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,12}", fullmatch=True)
VALUES = st.from_regex(r"[\x20-\x7e\t]{0,16}", fullmatch=True)
PATHS = st.from_regex(r"/v1/models/[A-Za-z0-9\-_~!$&'()*+,;=:@/.?%]{0,24}", fullmatch=True)


def aiohttps_reading(data: bytes, loop: asyncio.AbstractEventLoop) -> list:
    """What aiohttp's own parser (the C one, as the server runs it) makes of `data`: its messages; raises where it
    refuses it. Its protocol is a Handler of the server's, as on a connection."""
    protocol = HttpServer(lambda request: None, loop=loop, answer_whole=lambda request: None)()
    parser = HttpRequestParser(protocol, loop, 1 << 16, max_line_size=8190, max_field_size=8190)
    return [(message, payload.read_nowait()) for message, payload in parser.feed_data(data)[0]]


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@settings(max_examples=400, deadline=None)
@given(path=PATHS, host=st.sampled_from(["127.0.0.1:8501", "", None]), body=st.binary(max_size=24),
       headers=st.lists(st.tuples(NAMES | TOKENS, VALUES), max_size=6))
def test_what_is_read_here_aiohttps_parser_reads_alike(loop, path, host, headers, body):
    headers = ([("Host", host)] if host is not None else []) + headers
    data = (f"POST {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)).encode()
    data += b"Content-Length: %d\r\n\r\n" % len(body) + body
    whole = whole_request(data, None, 65536)
    if whole is not None:
        (message, read), = aiohttps_reading(data, loop)  # one message, not refused
        assert (message.method, message.path, read) == ("POST", whole.raw_path, body)
        assert message.url.raw_path == whole.raw_path  # what match() compares with the metrics path
        for name, _ in headers:
            assert whole.headers.get(name) == message.headers.get(name)


def test_a_header_block_over_the_limit_is_left_to_the_connection_that_refuses_it():
    assert whole_request(plain(), None, len(plain()) - len(BODY)) is not None
    assert whole_request(plain(), None, len(plain()) - len(BODY) - 1) is None


class InProcessServer:
    """RestApi with CORS on and tokens, on 127.0.0.1 in this event loop; batches wait up to 50 ms for others to join
    (so an answer is still being made when the next request of its connection arrives)."""

    def __init__(self, base, tokens, idle_timeout_s: float = 30.0):
        metrics = Metrics()
        manager = ModelManager(single_model_config("half_plus_two", str(base)), metrics, enable_warmup=False)
        manager.start(0)
        self.core = ServingCore(manager, metrics, BatchingParameters(num_batch_threads=1, batch_timeout_micros=50_000),
                                num_threads=1, access=Access(str(tokens)))
        self.api = RestApi(self.core, timeout_s=10.0, max_body_bytes=1 << 20, metrics_path=None, enable_cors=True,
                           idle_timeout_s=idle_timeout_s)
        self.whole: list[str] = []  # the paths of the requests answer_whole was given
        answer_whole = self.api.answer_whole
        self.api.answer_whole = lambda request: self.whole.append(request.raw_path) or answer_whole(request)

    async def __aenter__(self) -> InProcessServer:
        self.server = await asyncio.get_running_loop().create_server(self.api.make_server(), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()
        await self.api.close()
        self.core.close()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def answer(reader: asyncio.StreamReader) -> bytes:
    """One answer, with its Date left out."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"\r\nContent-Length: (\d+)", head).group(1))
    return re.sub(rb"\r\nDate: [^\r]*", b"", head) + await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.fixture
def tokens(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{id: p, token: '{TOKEN}', role: predict}}\n")
    return path


AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path, body, headers, status", [
    (PREDICT, BODY, AUTHORIZED, 200),
    (PREDICT, b'{"instances": [1.0,', AUTHORIZED, 400),  # the body's error
    ("/v1/models/nope:predict", BODY, AUTHORIZED, 404),
    ("/v1/models/half_plus_two/versions/18446744073709551615:predict", BODY, AUTHORIZED, 400),  # no body at all
    (PREDICT, BODY, {}, 401),  # WWW-Authenticate: Bearer among the headers
])
def test_an_answer_is_the_one_aiohttp_writes(half_plus_two_base, tokens, path, body, headers, status):
    async def main() -> tuple[bytes, bytes, list[str]]:
        async with InProcessServer(half_plus_two_base, tokens) as server:
            written = []
            for extra in ({}, {"Connection": "keep-alive"}):  # the lane's, then aiohttp's (which keeps alive too)
                reader, writer = await server.connect()
                writer.write(http_request("POST", path, body, {**headers, **extra}))
                written.append(await answer(reader))
                writer.close()
            return *written, server.whole

    whole, aiohttps, given = asyncio.run(main())
    assert given == [path]
    assert whole == aiohttps and whole.startswith(b"HTTP/1.1 %d " % status)


def test_what_arrives_while_an_answer_is_made_waits_for_it(half_plus_two_base, tokens):
    async def main() -> tuple[list[bytes], list[str]]:
        async with InProcessServer(half_plus_two_base, tokens) as server:
            reader, writer = await server.connect()
            answers = []
            for _ in range(3):
                writer.write(plain(headers=AUTHORIZED))
                await asyncio.sleep(0.01)  # read, and waiting in its batch (50 ms) when the next two come
                writer.write(http_request("GET", "/v1/models/half_plus_two", b"", AUTHORIZED))  # aiohttp's, at once
                writer.write(plain(body=b'{"instances": [4.0]}', headers=AUTHORIZED))
                answers += [await answer(reader) for _ in range(3)]
            writer.close()
            return answers, server.whole

    answers, given = asyncio.run(main())
    bodies = [a.partition(b"\r\n\r\n")[2] for a in answers]
    assert [b"[2.5, 3.0" in b for b in bodies] == [True, False, False] * 3, bodies  # 0.5 x + 2
    assert [b'"model_version_status"' in b for b in bodies] == [False, True, False] * 3
    assert [b"[4.0" in b for b in bodies] == [False, False, True] * 3
    assert given.count(PREDICT) >= 3  # the first of each three was the lane's


def test_a_request_held_back_is_answered_in_turn_and_reading_goes_on(half_plus_two_base, tokens):
    async def main() -> tuple[list[bytes], list[str]]:
        async with InProcessServer(half_plus_two_base, tokens) as server:
            reader, writer = await server.connect()
            writer.write(plain(headers=AUTHORIZED))
            await asyncio.sleep(0.01)  # read, and waiting in its batch when the next comes: held, then the lane's
            writer.write(plain(body=b'{"instances": [4.0]}', headers=AUTHORIZED))
            answers = [await answer(reader) for _ in range(2)]
            writer.write(plain(body=b'{"instances": [6.0]}', headers=AUTHORIZED))  # read once the held one is answered
            answers.append(await answer(reader))
            writer.close()
            return answers, server.whole

    answers, given = asyncio.run(main())
    assert [a.partition(b"\r\n\r\n")[2].split(b"[")[1].split(b"\n")[0] for a in answers] == [
        b"2.5, 3.0", b"4.0", b"5.0"]
    assert given == [PREDICT] * 3


def test_the_idle_timeout_waits_for_an_answer_and_closes_the_connection_after_it(half_plus_two_base, tokens):
    async def main() -> tuple[bytes, bytes, list[str]]:
        async with InProcessServer(half_plus_two_base, tokens, idle_timeout_s=0.02) as server:  # shorter than the
            reader, writer = await server.connect()  # answer's 50 ms in its batch
            writer.write(plain(headers=AUTHORIZED))
            answered = await answer(reader)
            closed = await asyncio.wait_for(reader.read(), 5)  # b"" once the server closes it
            writer.close()
            return answered, closed, server.whole

    answered, closed, given = asyncio.run(main())
    assert answered.startswith(b"HTTP/1.1 200 OK") and closed == b"" and given == [PREDICT]
