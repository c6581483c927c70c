"""The open-loop load generator: bounded, loopback only, latency from the scheduled send time."""
import asyncio

import pytest
from aiohttp import web

from localhost import loadgen


@pytest.mark.parametrize("url, message", [
    ("http://10.0.0.1:80/x", "refusing to load 10.0.0.1"),
    ("http://8.8.8.8/x", "only target loopback"),
    ("https://127.0.0.1/x", "expected an http://127.0.0.1:PORT/... URL"),
    ("http://no-such-host.invalid/x", "cannot resolve"),
])
def test_non_loopback_targets_are_refused(url, message):
    with pytest.raises(ValueError, match=message):
        loadgen.check_target(url)


@pytest.mark.parametrize("rate, seconds", [(10, 61), (0, 1), (30_000, 1)])
def test_unbounded_runs_are_refused(rate, seconds):
    with pytest.raises(ValueError, match="a bounded run needs"):
        asyncio.run(loadgen.open_loop("http://127.0.0.1:9/x", b"{}", rate, seconds))


def test_a_slow_server_shows_queueing_in_open_loop_latency():
    """A server that takes 50 ms per request, one at a time, offered 40 requests/s: closed loop
    would report 50 ms; open loop must report the growing queue (well above 50 ms at p99)."""
    lock = asyncio.Lock()

    async def handle(request):
        await request.read()
        async with lock:
            await asyncio.sleep(0.05)
        return web.Response(text="{}", status=200 if request.path == "/ok" else 503)

    async def scenario():
        runner = web.AppRunner(web.Application())
        runner.app.router.add_post("/{path}", handle)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            ok = await loadgen.open_loop(f"http://127.0.0.1:{port}/ok", b"{}", rate=40, seconds=1, connections=8)
            failing = await loadgen.open_loop(f"http://127.0.0.1:{port}/bad", b"{}", rate=5, seconds=1)
        finally:
            await runner.cleanup()
        return ok, failing

    ok, failing = asyncio.run(scenario())
    assert ok["ok"] == 40 and not ok["errors"]
    assert ok["p99_ms"] > 200, ok
    assert failing["errors"] == {"http_503": 5} and failing["ok"] == 0


def test_a_server_that_hangs_up_counts_as_errors_not_a_crash():
    async def hang_up(reader, writer):
        await reader.read(100)
        writer.close()

    async def scenario():
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await loadgen.open_loop(f"http://127.0.0.1:{port}/x", b"{}", rate=5, seconds=1, connections=2)

    result = asyncio.run(scenario())
    assert result["ok"] == 0 and sum(result["errors"].values()) == 5, result
