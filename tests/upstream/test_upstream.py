"""The upstream client: keep-alive reuse, stale connections, body framings, malformed answers and
back-pressure from a slow client, each over real sockets."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from proxy.http1.request import request_head
from proxy.upstream import UpstreamPool, endpoint
from tests.conftest import SECRET, Flood, base_config, stream_chunks

RUN = "/api/v1/run/wf_text"


async def raw_backend(handler):
    """A backend speaking raw bytes: ``handler(reader, writer, n)`` per connection (n counts them)."""
    count = 0

    async def serve(reader, writer):
        nonlocal count
        count += 1
        try:
            await handler(reader, writer, count)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", lambda: count


async def read_request(reader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + (await reader.readexactly(length) if length else b"")


def test_endpoint_and_request_head():
    ep = endpoint("https://lf.example:8443/base/api/v1/run/x?stream=true")
    assert ep.key == ("https", "lf.example", 8443) and ep.host_header == "lf.example:8443"
    assert ep.target == "/base/api/v1/run/x?stream=true"
    assert endpoint("http://[::1]/s").host_header == "[::1]" and endpoint("http://[::1]/s").key[2] == 80
    ep = endpoint("http://b:7860/run")
    head = request_head("POST", ep.target, ep.host_header, {"X-A": "1"}, 3)
    assert head == b"POST /run HTTP/1.1\r\nHost: b:7860\r\nX-A: 1\r\nContent-Length: 3\r\n\r\n"


async def test_sequential_runs_reuse_one_backend_connection(upstream, gateway):
    peers = []

    async def ok(request, seen):
        peers.append(request.transport.get_extra_info("peername"))
        return await stream_chunks(request, ["ok"])

    upstream.handle("/text", ok)
    client = await gateway(base_config(upstream.url))
    for _ in range(3):
        resp = await client.post(RUN, headers={"x-api-key": SECRET})
        assert resp.status == 200 and (await resp.json())["result"] == "ok"
    assert len(peers) == 3 and len(set(peers)) == 1


async def test_a_connection_the_backend_closed_while_idle_is_retried_once(gateway):
    """The backend answers once per connection, then closes the next request's connection without a
    byte: the gateway's second run goes out again on a fresh connection and succeeds."""

    async def once_per_connection(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
        await writer.drain()
        await read_request(reader)  # a second request on this connection: hang up unanswered

    server, url, connections = await raw_backend(once_per_connection)
    async with server:
        client = await gateway(base_config(url))
        for _ in range(3):
            resp = await client.post(RUN, headers={"x-api-key": SECRET})
            assert resp.status == 200 and (await resp.json())["result"] == "ok"
        assert connections() >= 3


async def test_a_body_that_ends_with_the_connection_is_complete(gateway):
    async def http10(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for word in (b"one ", b"two ", b"three"):
            writer.write(word)
            await writer.drain()
            await asyncio.sleep(0.01)

    server, url, _ = await raw_backend(http10)
    async with server:
        client = await gateway(base_config(url))
        resp = await client.post(RUN, headers={"x-api-key": SECRET})
        assert resp.status == 200 and (await resp.json())["result"] == "one two three"


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", b""])
async def test_a_malformed_or_missing_answer_is_502(gateway, answer):
    async def bad(reader, writer, n):
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    server, url, _ = await raw_backend(bad)
    async with server:
        client = await gateway(base_config(url))
        resp = await client.post(RUN, headers={"x-api-key": SECRET})
        assert resp.status == 502 and (await resp.json())["code"] == "backend_unavailable"


async def test_a_slow_client_pauses_the_backend_instead_of_filling_memory(upstream, gateway):
    """The backend could send 128 MiB at once; while the client reads nothing the gateway stops
    reading the backend, so only socket buffers' worth leaves it. Then everything arrives intact."""
    total = 128 << 20

    flood = Flood(total)
    upstream.handle("/text", flood)
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 10**9
    client = await gateway(cfg)
    resp = await client.post("/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming",
                             headers={"x-api-key": SECRET})
    assert resp.status == 200
    await asyncio.sleep(1.0)
    assert flood.sent < 48 << 20, f"the backend sent {flood.sent >> 20} MiB to a client that read nothing"
    received = 0
    while chunk := await resp.content.readany():
        received += chunk.count(b"x")
    assert received == total


class Discard:
    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def broken(self, message: str) -> None: ...

    def flush(self) -> None: ...


async def text_server(text: str, host: str = "127.0.0.1", ssl_context=None) -> tuple[web.AppRunner, int]:
    """A backend answering ``text`` on every GET; returns its runner (clean it up) and port."""

    async def answer(request):
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, 0, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


async def test_pool_keeps_at_most_max_idle_connections():
    runner, port = await text_server("ok")
    pool = UpstreamPool(max_idle=2)
    try:
        ep = pool.endpoint(f"http://127.0.0.1:{port}/")
        conns = [await pool.request(ep, "GET", {}, b"") for _ in range(4)]
        for conn in conns:
            await asyncio.sleep(0.01)  # the 2-byte body arrives
            conn.attach(Discard())
            conn.release()
        assert pool.idle_count() == 2
    finally:
        await pool.close()
        await runner.cleanup()


async def test_https_backend_over_a_verified_connection():
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)

    runner, port = await text_server("over tls", "localhost", server_ctx)
    try:
        untrusted = UpstreamPool()
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.request(untrusted.endpoint(f"https://localhost:{port}/tls"), "GET", {}, b"")
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        pool = UpstreamPool(ssl_context=client_ctx)
        conn = await pool.request(pool.endpoint(f"https://localhost:{port}/tls"), "GET", {}, b"")
        got: list[bytes] = []

        class Collect(Discard):
            def body(self, data: bytes) -> None:
                got.append(data)

        conn.attach(Collect())
        for _ in range(100):
            if conn.complete:
                break
            await asyncio.sleep(0.01)
        assert conn.status == 200 and b"".join(got) == b"over tls"
        conn.release()
        await pool.close()
    finally:
        await runner.cleanup()
