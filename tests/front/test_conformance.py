"""The front's HTTP/1.1 rules on raw sockets, one test per rule (issue 14: "Hardening the HTTP edges")."""

from __future__ import annotations

import asyncio
import socket

import pytest

from proxy.context import GATEWAY
from proxy.front.protocol import FrontProtocol
from tests.conftest import SECRET
from tests.front.raw import (
    FAST,
    OUT,
    STREAM,
    WF_STREAM,
    closed,
    config,
    connect,
    front_of,
    get,
    head,
    post,
    response,
)

pytestmark = pytest.mark.usefixtures("text_upstream")


def trickle(writer: asyncio.StreamWriter, pause: float) -> asyncio.Task:
    """A run request whose 100-byte body arrives one byte every ``pause`` seconds (cancel the task)."""
    writer.write(post(STREAM, b"x" * 100)[:-100])

    async def drip() -> None:
        for _ in range(100):
            writer.write(b"x")
            await asyncio.sleep(pause)

    return asyncio.create_task(drip())


# --- timers ------------------------------------------------------------------------------------------

async def test_a_head_that_never_ends_is_408_and_closed_by_the_head_timer(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: gw\r\n")
    for _ in range(3):  # bytes keep coming, but the head timer runs from the connect
        await asyncio.sleep(0.2)
        writer.write(b"x-pad: a\r\n")
    status, headers, _ = await response(reader)
    assert status == 408 and headers["connection"] == "close"
    assert await closed(reader, 3)


async def test_refused_heads_are_counted_by_reason(upstream, gateway):
    import re

    async def counts() -> dict[str, float]:
        text = await (await client.get("/metrics")).text()
        return {r: float(v) for r, v in re.findall(r'^flowgate_client_errors_total{reason="(\w+)"} (\S+)$', text, re.M)}

    client = await gateway(config(upstream, **FAST))
    before = await counts()
    assert "head_timeout" in before and "max_connections" in before  # every reason from the start
    for raw in (b"CONNECT gw:443 HTTP/1.1\r\nHost: gw\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        reader, writer = await connect(client)
        writer.write(raw)
        assert (await response(reader))[0] in (400, 405)
        writer.close()
    after = await counts()
    assert {r: after[r] - before[r] for r in after if after[r] != before[r]} == {"connect": 1, "host": 1}


async def test_a_silent_connection_is_closed_by_the_head_timer(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, _ = await connect(client)
    assert await asyncio.wait_for(reader.read(), 3) == b""


async def test_an_idle_keep_alive_connection_is_closed(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(post(STREAM))
    assert (await response(reader))[0] == 200
    assert await closed(reader, 3)


async def test_a_stalled_body_is_408_and_the_admission_is_released(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    gw = client.server.app[GATEWAY]
    reader, writer = await connect(client)
    writer.write(post(STREAM, b'{"a": 1}')[:-3])  # the body stalls 3 bytes short
    status, headers, body = await response(reader)
    assert status == 408 and headers["connection"] == "close" and b"request_timeout" in body
    assert await closed(reader, 3)
    assert upstream.requests == []
    account = await gw.store.get_account("acme")
    assert account.held == 0 and account.spent == 0


async def test_a_body_trickling_one_byte_every_2_s_is_ended_by_the_body_timer(upstream, gateway):
    client = await gateway(config(upstream, client_body_timeout_s=1.0))
    reader, writer = await connect(client)
    task = trickle(writer, pause=2)
    try:
        status, _, _ = await asyncio.wait_for(response(reader), 6)
        assert status == 408
        assert await closed(reader, 3)
    finally:
        task.cancel()
    assert upstream.requests == []


async def test_a_steady_body_that_outlasts_the_runs_cap_is_408_and_holds_nothing(upstream, gateway):
    """Each read within the body timer, but the whole body slower than the flow's max_duration_s:
    the run's cap ends it (a body may not outlive the credit hold it was admitted with)."""
    cfg = config(upstream, client_body_timeout_s=1.0)
    cfg["flows"][0]["max_duration_s"] = 1.5
    client = await gateway(cfg)
    gw = client.server.app[GATEWAY]
    reader, writer = await connect(client)
    task = trickle(writer, pause=0.25)
    try:
        status, _, body = await asyncio.wait_for(response(reader), 5)
        assert status == 408 and b"request_timeout" in body
    finally:
        task.cancel()
    assert upstream.requests == []
    account = await gw.store.get_account("acme")
    assert account.held == 0 and account.spent == 0


async def test_a_stalled_body_spends_the_stream_token_for_good(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    minted = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    token = (await minted.json())["token"]
    reader, writer = await connect(client)
    writer.write(post(f"{WF_STREAM}?token={token}", b'{"a": 1}', key=None)[:-2])
    assert (await response(reader))[0] == 408
    again = await client.post(f"{WF_STREAM}?token={token}", json={})
    assert again.status == 401  # not refunded


async def test_a_client_that_stops_reading_is_cut_by_the_write_timer(upstream, gateway):
    async def firehose(request, seen):
        from aiohttp import web
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"x" * 65536)
        except (ConnectionResetError, asyncio.CancelledError):
            seen.closed_early.set()
            raise

    upstream.handle("/firehose", firehose)
    cfg = config(upstream, **FAST)
    cfg["flows"].append({"id": "wf_fire", "owner": "acme", "tenant": "t1", "workspace": "w1",
                         "targets": {"Production": {"backend": "text", "path": "/firehose"}}})
    client = await gateway(cfg)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(post(STREAM.replace("wf_text", "wf_fire")))
    await reader.readuntil(b"xxxx")  # the stream started; now the client reads nothing
    await asyncio.wait_for(upstream.last.closed_early.wait(), 15)
    front = front_of(client)
    for _ in range(50):
        if not front.connections:
            break
        await asyncio.sleep(0.1)
    assert not front.connections
    writer.close()


# --- failures, caps, upgrades --------------------------------------------------------------------------

async def test_an_exception_in_the_connections_path_is_500_and_closes(upstream, gateway, monkeypatch):
    def broken(self, resp):
        raise RuntimeError("boom")

    monkeypatch.setattr(FrontProtocol, "_send", broken)
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(get("/api/v1/token", f"x-api-key: {SECRET}"))
    status, headers, _ = await response(reader)
    assert status == 500 and headers["connection"] == "close"
    assert await closed(reader, 3)


async def test_connections_beyond_max_connections_are_503_at_once(upstream, gateway):
    client = await gateway(config(upstream, max_connections=3))
    held = [await connect(client) for _ in range(3)]
    await asyncio.sleep(0.05)
    reader, writer = await connect(client)
    status, headers, _ = await asyncio.wait_for(response(reader), 2)
    assert status == 503 and headers["connection"] == "close"
    assert await closed(reader, 3)
    for _, w in held:
        w.close()
    await asyncio.sleep(0.1)
    reader, writer = await connect(client)
    writer.write(post(STREAM))
    assert (await response(reader))[0] == 200


async def test_a_pipelined_h2c_upgrade_is_served_as_http_1_1(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    upgrade = get("/api/v1/token", f"x-api-key: {SECRET}", "Connection: Upgrade, HTTP2-Settings",
                  "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA")
    writer.write(post(STREAM) + upgrade)
    first = await response(reader)
    second = await response(reader)
    assert (first[0], first[2]) == (200, OUT)
    assert second[0] == 200 and b'"token"' in second[2] and "upgrade" not in second[1]


async def test_a_single_upgrade_request_is_answered(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(post(STREAM, b"{}", "Connection: Upgrade", "Upgrade: websocket"))
    status, _, body = await response(reader)
    assert (status, body) == (200, OUT)
    assert upstream.last.headers.get("Upgrade") is None


async def test_connect_is_405(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    status, headers, _ = await response(reader)
    assert status == 405 and headers["connection"] == "close" and headers["allow"] == "GET, POST, OPTIONS"
    assert await closed(reader, 3)


# --- CORS ------------------------------------------------------------------------------------------

async def test_a_preflight_with_a_header_that_cannot_be_sent_is_refused_not_raised(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    bad = "Access-Control-Request-Headers: content-type, x-\u20ac"
    writer.write(head("OPTIONS", WF_STREAM, "Origin: https://app.example", "Access-Control-Request-Method: POST",
                      bad))
    status, headers, _ = await response(reader)
    assert status == 403 and "access-control-allow-headers" not in headers
    writer.write(head("OPTIONS", WF_STREAM, "Origin: https://app.example", "Access-Control-Request-Method: POST",
                      "Access-Control-Request-Headers: Content-Type, X-Trace"))
    status, headers, _ = await response(reader)  # the connection stays usable
    assert status == 204 and headers["access-control-allow-headers"] == "content-type, x-trace"


# --- the head before the body ------------------------------------------------------------------------

async def test_a_stranger_is_401_before_its_body_is_read(upstream, gateway):
    client = await gateway(config(upstream, max_body_bytes=10 * 1024 * 1024))
    reader, writer = await connect(client)
    big = 10 * 1024 * 1024
    writer.write(head("POST", STREAM, "x-api-key: bogus", f"Content-Length: {big}") + b"x" * 65536)
    status, headers, _ = await asyncio.wait_for(response(reader), 5)
    assert status == 401 and headers["connection"] == "close"
    assert upstream.requests == []


@pytest.mark.parametrize(("key", "length", "status"), [("bogus", 10, 401), (SECRET, 5000, 413)])
async def test_100_continue_comes_only_after_the_length_and_credential_checks(upstream, gateway, key, length,
                                                                                status):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {key}", f"Content-Length: {length}", "Expect: 100-continue"))
    got, _, _ = await response(reader)
    assert got == status  # never a 100 first


async def test_100_continue_is_sent_once_the_run_is_admitted(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {SECRET}", "Content-Length: 2", "Expect: 100-continue"))
    assert (await response(reader))[0] == 100
    writer.write(b"{}")
    assert (await response(reader))[::2] == (200, OUT)


@pytest.mark.parametrize("key,status", [("bogus", 401), (SECRET, 100)])
async def test_100_continue_on_a_chunked_body_handed_to_aiohttp_also_waits_for_admission(upstream, gateway,
                                                                                          key, status):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {key}", "Transfer-Encoding: chunked", "Expect: 100-continue"))
    assert (await response(reader))[0] == status  # a stranger gets its 401, never a 100 first
    if status == 100:
        writer.write(b"2\r\n{}\r\n0\r\n\r\n")
        assert (await response(reader))[::2] == (200, OUT)


async def test_a_lingering_close_follows_an_early_answer(upstream, gateway):
    client = await gateway(config(upstream, client_lingering_s=0.5, max_body_bytes=10 * 1024 * 1024))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, "x-api-key: bogus", "Content-Length: 1000000") + b"x" * 1000)
    status, headers, _ = await response(reader)
    assert status == 401 and headers["connection"] == "close"
    for _ in range(5):  # the gateway still drains what the client sends: no reset while it lingers
        writer.write(b"x" * 10000)
        await writer.drain()
        await asyncio.sleep(0.02)
    assert await reader.read() == b""  # write side shut: a clean EOF
    front = front_of(client)
    await asyncio.sleep(1.0)
    assert not front.connections


# --- RFC 9112 details --------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [
    get("/api/v1/token", f"x-api-key: {SECRET}", "Connection: close"),
    post(STREAM, b"{}", "Connection: close"),
])
async def test_connection_close_is_honoured_on_every_request(upstream, gateway, request_bytes):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    writer.write(request_bytes)
    status, headers, _ = await response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await closed(reader, 2)


@pytest.mark.parametrize("hosts", [[], ["gw", "gw"], ["a b"], ["gw/x"], ["gw:port"], ["[::1"]])
async def test_exactly_one_valid_host(upstream, gateway, hosts):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {SECRET}", "Content-Length: 0", *(f"Host: {h}" for h in hosts),
                      host=None))
    status, headers, _ = await response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert upstream.requests == []


async def test_x_forwarded_host_is_the_validated_host(upstream, gateway):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {SECRET}", "Content-Length: 0", "X-Forwarded-Host: evil",
                      host="gw.example:8080"))
    assert (await response(reader))[0] == 200
    assert upstream.last.headers["X-Forwarded-Host"] == "gw.example:8080"


async def test_at_most_128_request_headers(upstream, gateway):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    fill = [f"x-h{i}: v" for i in range(128 - 2)]  # + Host, x-api-key
    writer.write(get("/api/v1/token", f"x-api-key: {SECRET}", *fill))
    assert (await response(reader))[0] == 200
    writer.write(get("/api/v1/token", f"x-api-key: {SECRET}", *fill, "x-one-more: v"))
    status, headers, _ = await response(reader)
    assert status == 431 and headers["connection"] == "close"


async def test_header_names_with_underscores_are_not_forwarded(upstream, gateway):
    client = await gateway(config(upstream))
    reader, writer = await connect(client)
    writer.write(post(STREAM, b"{}", "x_user: admin", "x-user: guest"))
    assert (await response(reader))[0] == 200
    seen = {k.lower(): v for k, v in upstream.last.headers.items()}
    assert seen["x-user"] == "guest" and "x_user" not in seen


# --- connections handed to aiohttp -------------------------------------------------------------------

async def test_a_handed_over_connection_serves_one_request_and_leaves_the_connection_set(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(get("/healthz") + get("/healthz"))
    status, headers, _ = await response(reader)
    assert status == 200 and "aiohttp" in headers["server"] and headers["connection"] == "close"
    assert await closed(reader, 3)
    await asyncio.sleep(0.1)
    assert not front_of(client).connections


async def test_a_handed_over_request_whose_body_stalls_is_closed_by_the_timers(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(head("POST", "/nope", "Transfer-Encoding: chunked") + b"10\r\nabc")  # never finished
    assert await closed(reader, 5)
    await asyncio.sleep(0.1)
    assert not front_of(client).connections


async def test_a_chunked_run_body_that_stalls_is_408(upstream, gateway):
    client = await gateway(config(upstream, **FAST))
    reader, writer = await connect(client)
    writer.write(head("POST", STREAM, f"x-api-key: {SECRET}", "Transfer-Encoding: chunked") + b"10\r\nabc")
    status, _, _ = await asyncio.wait_for(response(reader), 5)
    assert status == 408
    assert await closed(reader, 5)
    assert upstream.requests == []


async def test_with_the_aiohttp_front_error_answers_never_quote_the_request(upstream, gateway):
    client = await gateway(config(upstream, front="aiohttp"))
    reader, writer = await connect(client)
    writer.write(f"GET /healthz?api_key={SECRET} HTTP/1.1 junk\r\nHost: gw\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.") and b" 400 " in data.split(b"\r\n")[0]
    assert SECRET.encode() not in data
