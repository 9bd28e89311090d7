"""Hostile clients in numbers: idle connections of every kind closed by the timers (file descriptors
back to baseline, /healthz answered meanwhile), strangers' uploads cost no memory, and malformed
requests carrying a key leave it in no log line and no response body."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tests.conftest import SECRET
from tests.front.raw import STREAM, WF_STREAM, closed, config, connect, front_of, head, post, response

pytestmark = pytest.mark.usefixtures("text_upstream")

N = 50  # of each kind: 150 connections


async def _preflight_non_latin1(client):
    reader, writer = await connect(client)
    writer.write(head("OPTIONS", WF_STREAM, "Origin: https://app.example", "Access-Control-Request-Method: POST",
                      "Access-Control-Request-Headers: x-\u20ac\u4e2d"))
    assert (await response(reader))[0] == 403
    return reader, writer


async def _run_then_pipelined_h2c(client):
    reader, writer = await connect(client)
    writer.write(post(STREAM) + post(STREAM, b"{}", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                     "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA"))
    assert (await response(reader))[0] == 200
    assert (await response(reader))[0] == 200  # served as HTTP/1.1; the connection stays, idle
    return reader, writer


async def _endless_head(client):
    reader, writer = await connect(client)
    writer.write(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: gw\r\nx-pad: ")
    return reader, writer


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def test_150_hostile_idle_connections_are_all_closed_by_the_timers(upstream, gateway):
    from tests.front.raw import open_fds

    client = await gateway(config(upstream, client_keepalive_timeout_s=5.0, client_head_timeout_s=5.0,
                                  upstream_keepalive=0))  # (pooled backend sockets would count too)
    front = front_of(client)
    await client.get("/healthz")
    await asyncio.sleep(0.1)
    baseline = open_fds()
    conns = []
    for make in (_preflight_non_latin1, _run_then_pipelined_h2c, _endless_head):
        conns += await asyncio.gather(*(make(client) for _ in range(N)))
    assert len(front.connections) >= 3 * N
    health = await client.get("/healthz")  # served meanwhile
    assert health.status == 200
    await asyncio.sleep(1.0)
    health = await client.get("/healthz")  # and still, while they wait
    assert health.status == 200
    results = await asyncio.gather(*(closed(r, 15) for r, _ in conns))  # keep-alive 5 s: all gone by 15 s
    assert all(results)
    for _, w in conns:
        w.close()
    await asyncio.sleep(0.5)
    assert not [c for c in front.connections if c.transport is not None and not c.transport.is_closing()]
    assert open_fds() <= baseline + 2  # the test client's own pool may hold one


async def test_unauthenticated_10_mib_uploads_are_401_before_their_bodies_finish(upstream, gateway):
    client = await gateway(config(upstream, max_body_bytes=10 * 1024 * 1024))
    await client.get("/healthz")
    gc.collect()
    before = rss_bytes()
    size = 10 * 1024 * 1024
    piece = b"x" * 65536

    async def upload() -> tuple[int, int]:
        reader, writer = await connect(client)
        writer.write(head("POST", STREAM, "x-api-key: fg_bogus_key", "Content-Type: application/octet-stream",
                          f"Content-Length: {size}"))
        answer = asyncio.create_task(response(reader))
        sent = 0
        try:
            while sent < size and not answer.done():
                writer.write(piece)
                sent += len(piece)
                await asyncio.wait_for(writer.drain(), 5)
        except (ConnectionError, TimeoutError):
            pass
        status, _, _ = await asyncio.wait_for(answer, 5)
        writer.close()
        return status, sent

    results = await asyncio.gather(*(upload() for _ in range(8)))
    grown = rss_bytes() - before
    assert all(status == 401 for status, _ in results)
    assert all(sent < size for _, sent in results)  # answered before the body finished
    assert grown < 30 * 1024 * 1024, grown
    assert upstream.requests == []


MALFORMED = [
    f"GET /api/v1/token?api_key={SECRET} HTTP/1.1 junk\r\nHost: gw\r\n\r\n".encode(),
    f"POST {STREAM}?api_key={SECRET} HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".encode(),
    f"POST {STREAM} HTTP/1.1\r\nHost: gw\r\nx-api-key: {SECRET}\r\n folded: {SECRET}\r\n\r\n".encode(),
    f"POST {STREAM} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {SECRET}\r\nBad Header: {SECRET}\r\n\r\n".encode(),
    f"POST {WF_STREAM}?token={SECRET} HTTP/1.1\r\nHost: {SECRET}/x\r\n\r\n".encode(),
    f"CONNECT {SECRET}:443 HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
    f"GET /healthz?token={SECRET} HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{SECRET}\r\n".encode(),
    f"POST /x?api_key={SECRET} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n{SECRET}\r\n".encode(),
    f"GET /api/v1/token HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nx-api-key: {SECRET}\xff\r\n\r\n".encode("latin-1"),
    f"\x16\x03\x01 {SECRET}\r\n\r\n".encode(),
]


async def test_malformed_requests_carrying_a_key_leave_it_in_no_log_and_no_body(upstream, gateway, capfd):
    client = await gateway(config(upstream, client_lingering_s=0.2))
    capfd.readouterr()
    for raw in MALFORMED:
        reader, writer = await connect(client)
        writer.write(raw)
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        assert SECRET.encode() not in data, raw
        assert data.startswith(b"HTTP/1."), raw  # answered, never left hanging
        writer.close()
    await asyncio.sleep(0.2)
    out, err = capfd.readouterr()
    logs = out + err
    assert SECRET not in logs
    assert "Traceback" not in logs
    assert len(logs.encode()) < 1500 * len(MALFORMED), len(logs)


async def test_a_client_that_pipelines_and_never_reads_is_served_no_further_and_cut(upstream, gateway):
    """Pipelined requests (each answered 401) from a client that reads nothing: once its answers
    back up past the transport's high-water mark, nothing more is read or served (the gateway
    buffers no more for it), and the write timer aborts it."""
    import socket

    client = await gateway(config(upstream, client_write_timeout_s=1.0))
    front = front_of(client)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", client.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    reader._transport.pause_reading()  # (the test's side reads nothing either)  # noqa: SLF001
    request = post(STREAM, b"", key="bogus")
    buffered = 0  # the most the gateway kept in user space for this client
    try:
        for i in range(40_000):
            writer.write(request)
            if i % 100 == 0:
                await asyncio.sleep(0)
                for conn in list(front.connections):
                    if conn.transport is not None:
                        buffered = max(buffered, conn.transport.get_write_buffer_size())
            if writer.transport.get_write_buffer_size() > 4 << 20:
                break  # the gateway stopped reading
    except ConnectionError:
        pass
    started = loop.time()
    while front.connections and loop.time() - started < 15:  # noqa: ASYNC110 - polling the server's set
        await asyncio.sleep(0.1)
    assert not front.connections, "the write timer did not cut the client"
    assert buffered < 256 * 1024, buffered  # at the high-water mark: answers stopped there
    writer.transport.abort()
