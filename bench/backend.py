"""Benchmark backend: stamps every line with its CLOCK_MONOTONIC send time (ns).

Routes (GET or POST; the body is read and ignored):
  /lines?n=100&ms=20[&id=X]  n lines ``L<seq>:<ns>;`` one every ms milliseconds (n=0: forever)
  /events?n=100&ms=20         the same lines as Langflow's ``token`` events (json.dumps, as Langflow's
                              EventManager writes them), then its ``end`` event
  /bulk?bytes=N               N bytes in 64 KiB chunks, as fast as the socket takes them
  /idle                       one line, then silence (for open-stream memory)
  /closed?id=X                when the request with that id was closed by its peer (ns), or null
Run: python -m bench.backend PORT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

CLOSED: dict[str, int] = {}
CHUNK = b"x" * 65536


async def lines(request: web.Request) -> web.StreamResponse:
    await request.read()
    n, ms = int(request.query.get("n", 100)), float(request.query.get("ms", 20))
    rid = request.query.get("id")
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    try:
        i = 0
        while n == 0 or i < n:
            await resp.write(b"L%d:%d;\n" % (i, time.monotonic_ns()))
            i += 1
            if ms:
                await asyncio.sleep(ms / 1000)
        await resp.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        if rid:
            CLOSED[rid] = time.monotonic_ns()
        raise
    return resp


def _event(event: str, data: dict) -> bytes:
    return json.dumps({"event": event, "data": data}).encode() + b"\n\n"


async def events(request: web.Request) -> web.StreamResponse:
    await request.read()
    n, ms = int(request.query.get("n", 100)), float(request.query.get("ms", 20))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    stamp = "2026-12-01T00:00:00.000000Z"
    for i in range(n):
        chunk = f"L{i}:{time.monotonic_ns()};\n"
        await resp.write(_event("token", {"chunk": chunk, "id": "msg-1", "timestamp": stamp}))
        if ms:
            await asyncio.sleep(ms / 1000)
    await resp.write(_event("end", {"result": {"session_id": "s", "outputs": []}}))
    await resp.write_eof()
    return resp


async def bulk(request: web.Request) -> web.StreamResponse:
    await request.read()
    left = int(request.query.get("bytes", 1 << 30))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    while left > 0:
        chunk = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        await resp.write(chunk)
        left -= len(chunk)
    await resp.write_eof()
    return resp


async def idle(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    await resp.write(b"L0:%d;\n" % time.monotonic_ns())
    await asyncio.sleep(3600)
    return resp


async def closed(request: web.Request) -> web.Response:
    return web.json_response({"closed_ns": CLOSED.get(request.query["id"])})


def app() -> web.Application:
    a = web.Application()
    for path, handler in (("/lines", lines), ("/events", events), ("/bulk", bulk), ("/idle", idle)):
        a.router.add_route("*", path, handler)
    a.router.add_get("/closed", closed)
    return a


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=16384)
