"""Shared fixtures: a scriptable fake upstream on a real socket, and a gateway in front of it.

``upstream`` is an aiohttp test server whose behaviour per path is set by the test
(``upstream.handle("/path", handler)``); it records every request it received (headers, query,
body) and whether the gateway closed it early. ``gateway(cfg)`` builds the app from a config dict
(see ``base_config``) and returns an aiohttp test client talking to it over a real socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.config import parse_config
from proxy.context import GATEWAY
from proxy.front import GatewayRunner
from proxy.logging import configure_logging
from tests.backends import SHARED, redis_url, require_redis  # noqa: F401  (re-exported for the tests)
from tests.backends import store_url as backend_url

SECRET = "fg_test_secret_acme_1"
OTHER_SECRET = "fg_test_secret_other_1"
SCOPED_SECRET = "fg_test_secret_scoped_dev"
NOEXEC_SECRET = "fg_test_secret_noexec"


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int) -> subprocess.Popen:
    """A throwaway redis-server on ``port`` (never the shared one), for outage tests."""
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("throwaway redis-server did not start")


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    closed_early: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Upstream:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.handlers: dict[str, Any] = {}
        self.arrived = asyncio.Event()
        self.url = ""

    def handle(self, path: str, handler) -> None:
        self.handlers[path] = handler

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, dict(request.query), dict(request.headers), await request.read())
        self.requests.append(seen)
        self.arrived.set()
        handler = self.handlers.get(request.path)
        if handler is None:
            return web.Response(status=404, text="no such path on the fake upstream")
        try:
            resp = await handler(request, seen)
        except (asyncio.CancelledError, ConnectionResetError):
            seen.closed_early.set()
            raise
        finally:
            seen.finished.set()
        return resp

    @property
    def last(self) -> Seen:
        return self.requests[-1]


class Flood:
    """A backend handler that sends ``total`` bytes of text as fast as its client reads them (64 KiB
    writes); ``sent`` is how far it got: what a test of back-pressure reads."""

    def __init__(self, total: int) -> None:
        self.total, self.sent = total, 0

    async def __call__(self, request: web.Request, seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        piece = b"x" * 65536
        while self.sent < self.total:
            await resp.write(piece)
            self.sent += len(piece)
        await resp.write_eof()
        return resp


async def stream_chunks(request: web.Request, chunks, *, delay: float = 0.0, content_type: str = "text/plain",
                        headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await resp.prepare(request)
    for chunk in chunks:
        await resp.write(chunk if isinstance(chunk, bytes) else chunk.encode())
        if delay:
            await asyncio.sleep(delay)
    await resp.write_eof()
    return resp


async def never_ending(request: web.Request, seen: Seen, content_type: str = "text/plain",
                       chunk: bytes = b"tick ") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    while True:
        await resp.write(chunk)
        await asyncio.sleep(0.05)


def langflow_tokens(count: int = 20, spacing_s: float = 0.05, usage: dict | None = None, forever: bool = False):
    """A handler streaming Langflow events as Langflow's EventManager writes them: ``count`` token
    events ("w0 ", "w1 ", ...) ``spacing_s`` apart (20 over ~1 s by default), then the flow's
    ``add_message`` (with ``usage`` as its properties' usage) and ``end``; ``forever``: tokens
    without end."""

    def frame(event: str, data: object) -> bytes:
        return orjson.dumps({"event": event, "data": data}) + b"\n\n"

    async def handler(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(frame("add_message", {"id": "u1", "text": "(the user's input)", "sender": "User",
                                               "sender_name": "User"}))
        i, words = 0, []
        while forever or i < count:
            words.append(f"w{i} ")
            await resp.write(frame("token", {"chunk": words[-1], "id": "m1", "timestamp": ""}))
            i += 1
            await asyncio.sleep(spacing_s)
        props = {"usage": usage} if usage is not None else {}
        await resp.write(frame("add_message", {"id": "m1", "text": "".join(words), "sender": "Machine",
                                               "sender_name": "AI", "properties": props}))
        await resp.write(frame("end", {"result": {"session_id": "s", "outputs": []}}))
        await resp.write_eof()
        return resp

    return handler


def base_config(upstream_url: str, **overrides: Any) -> dict:
    """A config with one account, three keys and flows over text and Langflow backends."""
    cfg: dict[str, Any] = {
        "store": "memory://",
        "server": {"max_body_bytes": 1024},
        "backends": {
            "text": {"url": upstream_url, "protocol": "text", "headers": {"x-backend-key": "backend-secret"},
                     "connect_timeout_s": 2},
            "lf": {"url": upstream_url, "protocol": "langflow", "connect_timeout_s": 2},
            "arr": {"url": upstream_url, "protocol": "json-array", "connect_timeout_s": 2},
        },
        "accounts": {"acme": {"initial_credits": 100000}, "other": {"initial_credits": 100000}},
        "flows": [
            {"id": "wf_text", "name": "texty", "owner": "acme", "tenant": "t1", "workspace": "w1",
             "targets": {"Production": {"backend": "text", "path": "/text"},
                         "Development": {"backend": "text", "path": "/text-dev"}}},
            {"id": "wf_lf", "name": "tutor", "owner": "acme", "tenant": "t1", "workspace": "w1",
             "targets": {"Production": {"backend": "lf", "path": "/lf?stream=true"}}},
            {"id": "wf_arr", "owner": "acme", "tenant": "t1", "workspace": "w1",
             "targets": {"Production": {"backend": "arr", "path": "/arr"}}},
            {"id": "wf_hidden", "owner": "acme", "tenant": "t1", "workspace": "w1", "published": False,
             "targets": {"Production": {"backend": "text", "path": "/text"}}},
            {"id": "wf_other", "owner": "other", "tenant": "t2", "workspace": "w2",
             "targets": {"Production": {"backend": "text", "path": "/text"}}},
        ],
        "keys": [
            {"id": "key_acme", "sha256": sha(SECRET), "owner": "acme"},
            {"id": "key_other", "sha256": sha(OTHER_SECRET), "owner": "other"},
            {"id": "key_scoped", "sha256": sha(SCOPED_SECRET), "owner": "acme", "envs": ["Development"]},
            {"id": "key_noexec", "sha256": sha(NOEXEC_SECRET), "owner": "acme", "policies": []},
        ],
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


@pytest.fixture
async def upstream(aiohttp_server) -> Upstream:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", up.dispatch)
    server = await aiohttp_server(app)
    up.url = str(server.make_url("")).rstrip("/")
    return up


@pytest.fixture
def text_upstream(upstream) -> Upstream:
    """The fake upstream answering ``/text`` with two chunks ("hello ", "world") and ``/forever``
    and ``/text-dev`` (wf_text's Development target) with chunks that never end."""

    async def text(request, seen):
        return await stream_chunks(request, ["hello ", "world"])

    async def forever(request, seen):
        return await never_ending(request, seen)

    upstream.handle("/text", text)
    upstream.handle("/forever", forever)
    upstream.handle("/text-dev", forever)
    return upstream


class GatewayTestServer(TestServer):
    """aiohttp's test server, run by the runner `flowgate serve` uses (the front included)."""

    async def _make_runner(self, **kwargs):
        server = self.app[GATEWAY].config.server
        return GatewayRunner(self.app, access_log=None, keepalive_timeout=server.client_keepalive_timeout_s, **kwargs)


@pytest.fixture
def gateway(aiohttp_client):
    """A gateway on a real socket, served as `flowgate serve` serves it (no aiohttp access log)."""

    async def make(cfg: dict):
        app = create_app(parse_config(cfg))
        return await aiohttp_client(GatewayTestServer(app))

    return make


@pytest.fixture(scope="session", autouse=True)
def json_logs():
    """JSON log lines to stderr, as in production (tests grep them for secrets)."""
    configure_logging("info", json=True)


@pytest.fixture(params=SHARED)
def store_url(request, tmp_path):
    """A shared store's URL (SQLite file, Redis, Redis Cluster, PostgreSQL), in a namespace of its own."""
    with backend_url(request.param, tmp_path) as url:
        yield url


async def all_or_first_failure(coros) -> None:
    """Run ``coros`` concurrently; on the first failure cancel the rest and raise it (the state it
    saw is not then torn down under the others)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()
