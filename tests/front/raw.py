"""Raw-socket helpers for the front's tests: requests as bytes, responses read off the socket."""

from __future__ import annotations

import asyncio
import os

from tests.conftest import SECRET, base_config

STREAM = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"
WF_STREAM = "/api/v1/run/wf_text/stream"
OUT = b'["hello ","world"]'  # the profitbase stream of the text backend's two chunks

FAST = {"client_head_timeout_s": 0.5, "client_body_timeout_s": 0.5, "client_keepalive_timeout_s": 0.5,
        "client_write_timeout_s": 0.5, "client_lingering_s": 0.5}


def config(upstream, **server) -> dict:
    cfg = base_config(upstream.url)
    cfg["server"] = {**cfg["server"], **server}
    cfg["flows"].append({"id": "wf_forever", "owner": "acme", "tenant": "t1", "workspace": "w1",
                         "targets": {"Production": {"backend": "text", "path": "/forever"}}})
    return cfg


async def connect(client):
    return await asyncio.open_connection("127.0.0.1", client.server.port)


def head(method: str, path: str, *extra: str, host: str | None = "gw") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *([f"Host: {host}"] if host is not None else []), *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes = b"{}", *extra: str, key: str | None = SECRET) -> bytes:
    auth = [f"x-api-key: {key}"] if key is not None else []
    return head("POST", path, *auth, "Content-Type: application/json", f"Content-Length: {len(body)}", *extra) + body


def get(path: str, *extra: str) -> bytes:
    return head("GET", path, *extra)


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off the socket: status, headers (lower-case names), de-chunked body."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                await reader.readline()
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readline()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def closed(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the gateway closes the connection within ``within`` seconds (whatever it sent)."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def front_of(client):
    """The FrontServer behind a test client (its open connection set)."""
    return client.server.runner.server
