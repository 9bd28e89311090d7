"""The backend client against hostile backends: raw asyncio servers writing exact bytes, the gateway
on a real socket. One test per rule: one response per request, limits on the head, timers on the
head and the body, the idle pool, interim answers, the non-streaming buffer's cap, and what of a
backend's head may reach the gateway's own."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from proxy.upstream import Connection, Limits, UpstreamError, UpstreamPool
from proxy.upstream.connection import ChunkedParser
from tests.conftest import SECRET, base_config
from tests.test_pump import open_stream

RUN = "/api/v1/run/wf_text"  # workflow, non-streaming: {"success": true, "result": "..."}
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
HELLO_CHUNKED = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n"
HELLO_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nSMUGGLED"
PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "parser"])


class Backend:
    """Answers each request on a connection with ``script(n)`` (n counts requests over all
    connections): byte strings to write, a number to sleep that long, None to hang up."""

    def __init__(self, script) -> None:
        self.script = script
        self.connections = self.requests = 0
        self.sent = 0
        self.reset = asyncio.Event()  # a write failed: the gateway dropped the connection

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                self.requests += 1
                for piece in self.script(self.requests):
                    if piece is None:
                        return
                    if isinstance(piece, (int, float)):
                        await asyncio.sleep(piece)
                        continue
                    writer.write(piece)
                    await writer.drain()
                    self.sent += len(piece)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.reset.set()
        finally:
            writer.close()


@pytest.fixture
async def backend():
    servers = []

    async def start(script) -> Backend:
        b = Backend(script)
        server = await asyncio.start_server(b.serve, "127.0.0.1", 0)
        servers.append(server)
        b.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]
        return b

    yield start
    for server in servers:
        server.close()


def config(url: str, compiled: bool = True, server: dict | None = None, **backend) -> dict:
    cfg = base_config(url)
    cfg["server"] = {**cfg["server"], "compiled_text_path": compiled, **(server or {})}
    cfg["backends"]["text"].update(backend)
    cfg["accounts"]["acme"]["initial_credits"] = 10**9  # big bodies: credits never cut them first
    return cfg


async def stream_text(client) -> tuple[int, bytes]:
    resp = await open_stream(client, "profitbase", "wf_text")
    try:
        return resp.status, await resp.read()
    except Exception:  # noqa: BLE001 - an aborted body: what arrived is all there is
        return resp.status, b"<aborted>"


async def run(client) -> tuple[int, dict]:
    resp = await client.post(RUN, headers={"x-api-key": SECRET})
    return resp.status, await resp.json()


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
    lenient = ChunkedParser is None and not compiled and first.startswith(CHUNKED_HEAD)  # llhttp alone skips it
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


# --- the non-streaming buffer ---

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


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

class Sink:
    """A body consumer that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.failure: str | None = None

    def body(self, data: bytes) -> None:
        self.got.append(data)

    def end(self) -> None: ...

    def broken(self, message: str) -> None:
        self.failure = message

    def flush(self) -> None: ...


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


@PATHS
async def test_a_trailer_section_of_too_many_fields_breaks_the_stream(backend, gateway, compiled):
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(200))
    b = await backend(lambda n: [CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n" + trailers + b"\r\n"])
    client = await gateway(config(b.url, compiled))
    assert await stream_text(client) == (200, b"<aborted>")


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
