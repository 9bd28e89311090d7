"""The backend client's timers against hostile backends (tests/hostile.py): a head that never
completes, a body that stalls, a slow but steady one, and a client that does not read."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from proxy.upstream import Limits, UpstreamPool
from tests.upstream.hostile import (  # noqa: F401 - backend_fixture: the `backend` fixture
    CHUNKED_HEAD,
    HELLO_LENGTH,
    PATHS,
    Backend,
    Sink,
    backend_fixture,
    compiled_fixture,
    config,
    run,
    stream_text,
)

# --- timers ---

async def test_a_head_trickled_one_byte_at_a_time_is_a_504_at_the_head_timeout(backend, gateway):
    trickle = [piece for byte in HELLO_LENGTH for piece in (bytes([byte]), 0.1)]
    b = await backend(lambda n: trickle)
    client = await gateway(config(b.url, head_timeout_s=0.5))
    started = time.monotonic()
    status, body = await run(client)
    assert status == 504 and body["code"] == "backend_timeout"
    assert 0.4 < time.monotonic() - started < 2
    await asyncio.wait_for(b.reset.wait(), 5)


@PATHS
async def test_a_stalled_streaming_body_breaks_off_at_the_read_timeout(backend, gateway, compiled):
    b = await backend(lambda n: [CHUNKED_HEAD + b"5\r\nhello\r\n", 30])
    client = await gateway(config(b.url, compiled, read_timeout_s=0.4))
    started = time.monotonic()
    status, body = await stream_text(client)
    assert status == 200 and body == b"<aborted>"  # incomplete, never a clean end
    assert 0.3 < time.monotonic() - started < 2


async def test_a_stalled_non_streaming_body_is_a_504(backend, gateway):
    b = await backend(lambda n: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", 30])
    client = await gateway(config(b.url, read_timeout_s=0.4))
    started = time.monotonic()
    status, body = await run(client)
    assert status == 504 and body["code"] == "backend_timeout"
    assert time.monotonic() - started < 2


async def test_a_slow_but_steady_body_is_not_a_stall(backend, gateway):
    words = [b"%x\r\n%s\r\n" % (len(w), w) for w in (b"one ", b"two ", b"three ", b"four")]
    b = await backend(lambda n: [CHUNKED_HEAD] + [p for w in words for p in (0.15, w)] + [b"0\r\n\r\n"])
    client = await gateway(config(b.url, read_timeout_s=0.4))
    status, body = await stream_text(client)
    assert status == 200 and "".join(json.loads(body)) == "one two three four"


async def test_a_client_that_does_not_read_does_not_time_the_backend_out():
    """A paused connection (the client cannot keep up) is not stalled: the read timer waits."""
    b = Backend(lambda n: [CHUNKED_HEAD + b"5\r\nhello\r\n", 0.8, b"0\r\n\r\n"])
    server = await asyncio.start_server(b.serve, "127.0.0.1", 0)
    pool = UpstreamPool()
    try:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
        limits = Limits(head_timeout_s=1, read_timeout_s=0.3)
        conn = await pool.request(pool.endpoint(url), "GET", {}, b"", limits)
        sink = Sink()
        conn.attach(sink)
        conn.pause()
        await asyncio.sleep(1.0)
        conn.resume()
        for _ in range(100):
            if conn.complete:
                break
            await asyncio.sleep(0.01)
        assert conn.complete and sink.failure is None and b"".join(sink.got) == b"hello"
        conn.release()
    finally:
        await pool.close()
        server.close()


@PATHS
@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "workflow-ui"])
async def test_the_response_head_reaches_the_client_while_the_backend_is_silent(backend, gateway, compiled, dialect):
    """The front sends its head with the body's first bytes when they come with the backend's head;
    when only the head came, it leaves at once (the client sees the 200 and its headers long before
    the backend's first byte), then the body follows and ends cleanly."""
    b = await backend(lambda n: [CHUNKED_HEAD, 1.5, b"5\r\nhello\r\n0\r\n\r\n"])
    client = await gateway(config(b.url, compiled, read_timeout_s=5))
    from tests.stream.test_pump import open_stream

    started = time.monotonic()
    resp = await open_stream(client, dialect, "wf_text")
    assert resp.status == 200 and resp.headers.get("flow-job-id")
    assert time.monotonic() - started < 1.0
    assert b"hello" in await resp.read()
    assert time.monotonic() - started >= 1.4
