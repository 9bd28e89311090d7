"""What a backend may make the gateway keep: a non-streaming run's body up to
``server.max_buffered_response_bytes``, and of its head only what is plain (tests/hostile.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.upstream import UpstreamError, UpstreamPool
from tests.conftest import SECRET
from tests.stream.test_pump import open_stream
from tests.upstream.hostile import (  # noqa: F401 - backend_fixture: the `backend` fixture
    CHUNKED_HEAD,
    RUN,
    backend_fixture,
    config,
    rss,
    run,
    stream_text,
)

# --- the non-streaming buffer ---

@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_non_streaming_body_over_the_cap_is_a_502_without_buffering_it(backend, gateway, framing):
    total, piece = 60 << 20, b"x" * 65536
    if framing == "chunked":
        head, frame = CHUNKED_HEAD, b"%x\r\n%s\r\n" % (len(piece), piece)
    else:
        head, frame = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total, piece
    b = await backend(lambda n: [head] + [frame] * (total // len(piece)) + ([b"0\r\n\r\n"] if framing == "chunked"
                                                                          else []))
    client = await gateway(config(b.url, server={"max_buffered_response_bytes": 1 << 20}))
    before = rss()
    status, body = await run(client)
    assert status == 502 and body["code"] == "backend_unavailable"
    assert rss() - before < 40 << 20
    await asyncio.wait_for(b.reset.wait(), 5)  # the gateway stopped reading and hung up
    assert b.sent < 16 << 20


async def test_a_non_streaming_body_up_to_the_cap_is_answered(backend, gateway):
    b = await backend(lambda n: [CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (1000, b"y" * 1000)])
    client = await gateway(config(b.url, server={"max_buffered_response_bytes": 1000}))
    status, body = await run(client)
    assert status == 200 and body["result"] == "y" * 1000


async def test_a_streaming_run_is_not_capped(backend, gateway):
    b = await backend(lambda n: [CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (5000, b"z" * 5000)])
    client = await gateway(config(b.url, server={"max_buffered_response_bytes": 1000}))
    status, body = await stream_text(client)
    assert status == 200 and "".join(json.loads(body)) == "z" * 5000


# --- what of a backend's head the gateway keeps ---

@pytest.mark.parametrize("value,kept", [
    (b"job-42:a.b_C", True), (b"bad id", False), ("日本".encode(), False), (b"x" * 129, False),
    (b"a/b", False), (b"-lead", False),
])
async def test_only_a_plain_token_of_a_backends_job_id_is_kept(backend, value, kept):
    b = await backend(lambda n: [b"HTTP/1.1 200 OK\r\nflow-job-id: " + value + b"\r\nContent-Length: 0\r\n\r\n"])
    pool = UpstreamPool()
    try:
        conn = await pool.request(pool.endpoint(b.url + "/x"), "GET", {}, b"")
        assert conn.headers.get("flow-job-id") == (value.decode() if kept else None)
        conn.close()
    finally:
        await pool.close()


async def test_limits_fail_the_request_at_the_pool(backend):
    b = await backend(lambda n: [b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20 + b"\r\n"])
    pool = UpstreamPool(max_headers=10)
    try:
        with pytest.raises(UpstreamError, match="over 10 header lines"):
            await pool.request(pool.endpoint(b.url + "/x"), "GET", {}, b"")
    finally:
        await pool.close()


@pytest.mark.parametrize("value", ["日本".encode(), b"a b", b"x" * 200, b"\xff"])
async def test_a_backend_job_id_that_is_not_a_plain_token_never_reaches_a_response_head(backend, gateway, value):
    head = b"HTTP/1.1 200 OK\r\nflow-job-id: " + value + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    b = await backend(lambda n: [head + b"5\r\nhello\r\n0\r\n\r\n"])
    client = await gateway(config(b.url))
    streamed = await open_stream(client, "profitbase", "wf_text")
    await streamed.read()
    for resp in (streamed, await client.post(RUN, headers={"x-api-key": SECRET})):
        assert resp.status == 200
        job_id = resp.headers["flow-job-id"]
        assert job_id.isascii() and job_id.isalnum() and job_id.encode() != value
        await resp.read()
