"""Hypothesis: generated request heads and bodies, fed to the front at random splits, are never
answered 5xx and never hang: every connection is answered or closed within the gateway's timers.

The gateway (and a text backend) run on their own event loop in a thread; the test speaks to it
with blocking sockets, so each example is a plain function call."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.app import create_app
from proxy.config import parse_config
from proxy.front import GatewayRunner
from tests.conftest import SECRET, base_config, free_port

TIMERS = {"client_head_timeout_s": 0.3, "client_body_timeout_s": 0.3, "client_keepalive_timeout_s": 0.3,
          "client_write_timeout_s": 0.5, "client_lingering_s": 0.3}
HANG_S = 5.0  # far above every timer: a connection still open after this hangs


class Gateway:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.runners: list[web.BaseRunner] = []
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        async def text(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await resp.prepare(request)
            await resp.write(b"hello ")
            await resp.write_eof(b"world")
            return resp

        up = web.Application()
        up.router.add_route("*", "/{tail:.*}", text)
        up_runner = web.AppRunner(up, access_log=None)
        await up_runner.setup()
        up_port = free_port()
        await web.TCPSite(up_runner, "127.0.0.1", up_port).start()
        cfg = base_config(f"http://127.0.0.1:{up_port}")
        cfg["server"] = {"max_body_bytes": 1024, **TIMERS}
        runner = GatewayRunner(create_app(parse_config(cfg)), handler_cancellation=True, access_log=None,
                               keepalive_timeout=0.3)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self.runners = [runner, up_runner]

    def stop(self) -> None:
        async def cleanup() -> None:
            for r in self.runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def live_gateway():
    gw = Gateway()
    yield gw
    gw.stop()


PATHS = ["/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming", "/api/v1/tenants/t1/workspaces/w1/flows/"
         "wf_text/run", "/api/v1/run/wf_text/stream", "/api/v1/run/wf_text", "/api/v1/token", "/langflow/api/v1/run/"
         "wf_text", "/healthz", "/nope", "/api/v1/run/wf%5Ftext", "*", "http://gw/api/v1/token", "/a/../healthz"]
QUERIES = ["", "?stream=true", f"?api_key={SECRET}", "?api_key=bogus", "?token=pub_tok_x", "?env=Banana", "?a=%ff"]
NAME = st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Expect", "Upgrade",
                        "x-api-key", "Authorization", "Content-Type", "Origin", "Access-Control-Request-Method",
                        "Access-Control-Request-Headers", "x_under", "X-Forwarded-Host"]) | st.from_regex(
    r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True) | st.binary(min_size=0, max_size=8).map(
    lambda b: b.decode("latin-1"))
VALUE = st.sampled_from(["gw", "close", "keep-alive", "Upgrade, HTTP2-Settings", "h2c", "chunked", "100-continue",
                         "0", "5", "-1", "99999999999", SECRET, f"Bearer {SECRET}", "https://a.example", "POST",
                         "x-\u20ac", "gw:80", "a b", ""]) | st.text(max_size=12) | st.binary(max_size=12).map(
    lambda b: b.decode("latin-1"))


@st.composite
def requests(draw) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "OPTIONS", "PUT", "CONNECT", "PRI", "G\x00T"]))
    target = draw(st.sampled_from(PATHS)) + draw(st.sampled_from(QUERIES))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x"]))
    headers = draw(st.lists(st.tuples(NAME, VALUE), max_size=8))
    if draw(st.booleans()):
        headers.append(("Host", "gw"))
    body = draw(st.binary(max_size=64))
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body) + draw(st.integers(-3, 3)))))
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n"]))
    if draw(st.integers(0, 2)) == 0:  # a well-formed request, so runs and keep-alive are exercised too
        version, eol = "HTTP/1.1", "\r\n"
        method = draw(st.sampled_from(["GET", "POST", "OPTIONS"]))
        headers = [("Host", "gw"), ("x-api-key", draw(st.sampled_from([SECRET, "bogus"]))),
                   ("Content-Length", str(len(body))), *headers[:2]]
    lines = [f"{method} {target} {version}", *(f"{n}: {v}" for n, v in headers)]
    raw = (eol.join(lines) + eol + eol).encode("utf-8", "surrogateescape") + body
    return raw * draw(st.integers(1, 2))  # sometimes pipelined twice


def exchange(port: int, raw: bytes, cuts: list[int]) -> bytes:
    """Send ``raw`` in pieces at ``cuts``, then read until the gateway closes (or HANG_S passes)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(HANG_S)
    got = b""
    start = time.monotonic()
    try:
        last = 0
        for cut in [*sorted(set(cuts)), len(raw)]:
            cut = min(cut, len(raw))
            if cut > last:
                sock.sendall(raw[last:cut])
                last = cut
                time.sleep(0.005)
        while time.monotonic() - start < HANG_S:
            data = sock.recv(65536)
            if not data:
                return got
            got += data
        raise AssertionError(f"connection still open after {HANG_S}s: {raw!r}")
    except (ConnectionResetError, BrokenPipeError):
        return got
    except TimeoutError:
        raise AssertionError(f"no answer and no close within {HANG_S}s: {raw!r}") from None
    finally:
        sock.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(raw=requests(), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_generated_requests_never_5xx_and_never_hang(live_gateway, raw, cuts):
    got = exchange(live_gateway.port, raw, cuts)
    for line in got.split(b"\r\n"):
        if line.startswith(b"HTTP/1."):
            parts = line.split()
            assert len(parts) > 1 and not parts[1].startswith(b"5"), (raw, got[:300])
    assert SECRET.encode() not in got
