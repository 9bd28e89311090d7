"""The backend client against hostile backends (tests/hostile.py), the gateway on a real socket,
one test per rule: one response per request, the idle pool, interim answers, limits on the head,
chunk framing on both paths."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from proxy.upstream import Connection, UpstreamError, UpstreamPool
from proxy.upstream.connection import ChunkedBody
from tests.upstream.hostile import (  # noqa: F401 - backend_fixture: the `backend` fixture
    CHUNKED_HEAD,
    HELLO_CHUNKED,
    HELLO_LENGTH,
    LLHTTP,
    PATHS,
    SMUGGLED,
    Sink,
    backend_fixture,
    compiled_fixture,
    config,
    run,
    stream_text,
)

# --- one response per request ---

@PATHS
@pytest.mark.parametrize("first", [HELLO_CHUNKED, HELLO_LENGTH], ids=["chunked", "length"])
@pytest.mark.parametrize("apart", [False, True], ids=["one-read", "two-reads"])
async def test_a_second_response_on_the_connection_never_reaches_the_client(backend, gateway, compiled, first,
                                                                             apart):
    b = await backend(lambda n: ([first, 0.05, SMUGGLED] if apart else [first + SMUGGLED]) if n == 1
                      else [HELLO_CHUNKED])
    client = await gateway(config(b.url, compiled))
    for _ in range(2):
        status, body = await stream_text(client)
        assert status == 200 and json.loads(body) == ["hello"], body
        await asyncio.sleep(0.1)  # (two-reads: the second response arrives after the first ended)
    assert b.connections == 2  # the first connection was dropped, not reused


@PATHS
@pytest.mark.parametrize("first", [HELLO_CHUNKED + b"\r\n", HELLO_LENGTH + b"\r\n", HELLO_LENGTH + b"\r\n\r\n"],
                         ids=["chunked", "length", "length-2"])
async def test_even_an_empty_line_after_the_response_keeps_the_connection_from_reuse(backend, gateway, compiled,
                                                                                      first):
    b = await backend(lambda n: [first] if n == 1 else [HELLO_CHUNKED])
    client = await gateway(config(b.url, compiled))
    for _ in range(2):
        status, body = await stream_text(client)
        assert status == 200 and json.loads(body) == ["hello"], body
    lenient = (ChunkedBody is None or compiled == LLHTTP) and first.startswith(CHUNKED_HEAD)  # llhttp alone skips it
    assert b.connections == (1 if lenient else 2)


@pytest.mark.parametrize("first", [
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown",
    b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
], ids=["empty", "length", "chunked"])
async def test_a_503_followed_by_a_200_is_a_502(backend, gateway, first):
    b = await backend(lambda n: [first + HELLO_LENGTH])
    client = await gateway(config(b.url))
    status, body = await run(client)
    assert status == 502 and body["code"] == "backend_unavailable"


async def test_bytes_while_idle_in_the_pool_drop_the_connection(backend, gateway):
    b = await backend(lambda n: [HELLO_LENGTH, 0.1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad"] if n == 1
                      else [HELLO_LENGTH])
    client = await gateway(config(b.url))
    assert await run(client) == (200, {"success": True, "result": "hello"})
    await asyncio.sleep(0.3)  # the stray response arrives while the connection sits in the pool
    assert await run(client) == (200, {"success": True, "result": "hello"})
    assert b.connections == 2


async def test_a_pool_connection_that_hears_a_byte_is_gone_from_the_pool(backend):
    b = await backend(lambda n: [HELLO_LENGTH, 0.1, b"\r\n"])
    pool = UpstreamPool()
    try:
        conn = await pool.request(pool.endpoint(b.url + "/x"), "GET", {}, b"")
        conn.attach(Sink())
        conn.release()
        assert pool.idle_count() == 1
        await asyncio.sleep(0.3)
        assert pool.idle_count() == 0
    finally:
        await pool.close()


@PATHS
async def test_an_interim_100_continue_is_read_past(backend, gateway, compiled):
    b = await backend(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n", 0.02,
                                 b"HTTP/1.1 102 Processing\r\nX-A: 1\r\n\r\n" + HELLO_CHUNKED])
    client = await gateway(config(b.url, compiled))
    for _ in range(2):
        status, body = await stream_text(client)
        assert status == 200 and json.loads(body) == ["hello"]
    assert b.connections == 1


async def test_endless_interim_answers_count_toward_the_head_limit(backend, gateway):
    b = await backend(lambda n: [b"HTTP/1.1 100 Continue\r\n\r\n" * 1000] * 100)
    client = await gateway(config(b.url))
    started = time.monotonic()
    status, body = await run(client)
    assert status == 502 and body["code"] == "backend_unavailable" and time.monotonic() - started < 2


async def test_a_101_switching_protocols_is_a_502(backend, gateway):
    b = await backend(lambda n: [b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                                 + HELLO_LENGTH])
    client = await gateway(config(b.url))
    status, body = await run(client)
    assert status == 502 and body["code"] == "backend_unavailable"


# --- the head's limits ---

async def test_a_3_mib_head_of_200000_headers_is_a_quick_502(backend, gateway):
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%06d: vvvv\r\n" % i for i in range(200_000)) + b"\r\n"
    assert len(head) > 3 << 20
    b = await backend(lambda n: [head[i:i + 65536] for i in range(0, len(head), 65536)] + [b"ok"])
    client = await gateway(config(b.url))
    started = time.monotonic()
    status, body = await run(client)
    assert status == 502 and body["code"] == "backend_unavailable"
    assert time.monotonic() - started < 2
    await asyncio.wait_for(b.reset.wait(), 5)  # the gateway hung up instead of reading it all


async def test_a_head_is_parsed_up_to_its_limit_and_not_one_read_more(backend, monkeypatch):
    head = b"HTTP/1.1 200 OK\r\n" + b"X-H: v\r\n" * 400_000 + b"\r\n"
    b = await backend(lambda n: [head[i:i + 65536] for i in range(0, len(head), 65536)])
    fed = []
    feed = Connection._feed
    monkeypatch.setattr(Connection, "_feed", lambda self, data: (fed.append(len(data)), feed(self, data))[1])
    pool = UpstreamPool(max_headers=10**6)  # the size limit, not the count, stops this one
    try:
        with pytest.raises(UpstreamError, match="head is over 65536 bytes"):
            await pool.request(pool.endpoint(b.url + "/x"), "GET", {}, b"")
        assert sum(fed) <= 65536
    finally:
        await pool.close()


@pytest.mark.parametrize("count,status", [(100, 200), (101, 502)])
async def test_more_header_lines_than_the_limit_is_a_502(backend, gateway, count, status):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))
    b = await backend(lambda n: [head + b"\r\nok"])
    client = await gateway(config(b.url))
    got, body = await run(client)
    assert got == status, body


async def test_the_head_size_limit_is_the_configured_one(backend, gateway):
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"v" * 3000 + b"\r\n\r\nok"
    b = await backend(lambda n: [head])
    assert (await run(await gateway(config(b.url))))[0] == 200
    got, body = await run(await gateway(config(b.url, server={"upstream_max_head_bytes": 2048})))
    assert got == 502 and body["code"] == "backend_unavailable"


# --- chunk framing (the parsers themselves: tests/test_chunked.py) ---

@PATHS
@pytest.mark.parametrize("size_line", [b"5 junk", b"5 ", b"5;a=b c", b"fffffffffffffffff"])
async def test_a_chunk_size_line_llhttp_refuses_breaks_the_stream(backend, gateway, compiled, size_line):
    b = await backend(lambda n: [CHUNKED_HEAD + size_line + b"\r\nhello\r\n0\r\n\r\n"] if n == 1 else [HELLO_CHUNKED])
    client = await gateway(config(b.url, compiled))
    assert await stream_text(client) == (200, b"<aborted>")
    status, body = await stream_text(client)
    assert status == 200 and json.loads(body) == ["hello"]
    assert b.connections == 2


@PATHS
async def test_extensions_and_trailers_keep_the_connection(backend, gateway, compiled):
    body = CHUNKED_HEAD + b'5;name=value;q="a \\" b"\r\nhello\r\n0;last\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n'
    b = await backend(lambda n: [body[:60], 0.01, body[60:]])
    client = await gateway(config(b.url, compiled))
    for _ in range(2):
        status, got = await stream_text(client)
        assert status == 200 and json.loads(got) == ["hello"]
    assert b.connections == 1


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"], indirect=True)
async def test_a_trailer_section_of_many_megabytes_breaks_the_stream_at_its_limit(backend, gateway, compiled):
    """One trailer field of 64 MiB, sent as fast as it goes: broken off once the trailer section
    passes its limit on either path, the gateway's loop free. (Not on an install without the
    compiled modules: llhttp alone takes a trailer field whole; the README says so.)"""
    import time

    from proxy.upstream.chunked import MAX_TRAILER_BYTES

    piece = b"a" * (1 << 20)
    b = await backend(lambda n: [CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-T: ", *([piece] * 64), b"\r\n\r\n"])
    client = await gateway(config(b.url, compiled))
    started = time.monotonic()
    assert await stream_text(client) == (200, b"<aborted>")
    assert time.monotonic() - started < 2
    assert MAX_TRAILER_BYTES <= 1 << 20


@PATHS
async def test_a_trailer_section_of_too_many_fields_breaks_the_stream(backend, gateway, compiled):
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(200))
    b = await backend(lambda n: [CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"])
    client = await gateway(config(b.url, compiled))
    assert await stream_text(client) == (200, b"<aborted>")
