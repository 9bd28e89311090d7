"""Hostile backends for the backend client's tests: raw asyncio servers writing exact bytes (a
``backend`` fixture), the gateway's config around them, and what a client reads back."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import SECRET, base_config
from tests.stream.test_pump import open_stream

RUN = "/api/v1/run/wf_text"  # workflow, non-streaming: {"success": true, "result": "..."}
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
HELLO_CHUNKED = CHUNKED_HEAD + b"5\r\nhello\r\n0\r\n\r\n"
HELLO_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nSMUGGLED"
LLHTTP = "llhttp"
# the compiled text path (a chunked body read by ChunkedBody), the Python pump (ChunkedBody too), and
# the Python pump where the compiled modules were not built (llhttp reads a chunked body itself);
# a module using it imports ``compiled_fixture`` too
PATHS = pytest.mark.parametrize("compiled", [True, False, LLHTTP], ids=["compiled", "python", "llhttp"],
                                indirect=True)


@pytest.fixture(name="compiled")
def compiled_fixture(request, monkeypatch):
    if request.param == LLHTTP:
        monkeypatch.setattr("proxy.upstream.connection.ChunkedBody", None)
    return request.param


class Backend:
    """Answers each request on a connection with ``script(n)`` (n counts requests over all
    connections): byte strings to write, a number to sleep that long, None to hang up."""

    def __init__(self, script, gap: float = 0.0) -> None:
        self.script = script
        self.gap = gap  # a pause before every piece but the first (each its own read on the gateway's side)
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
                for i, piece in enumerate(self.script(self.requests)):
                    if i and self.gap:
                        await asyncio.sleep(self.gap)
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


@pytest.fixture(name="backend")
async def backend_fixture():
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
    cfg["server"] = {**cfg["server"], "compiled_text_path": compiled is True, **(server or {})}
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


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


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
