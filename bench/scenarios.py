"""The benchmark's scenarios, each run against one path (direct, nginx, the pipe, or flowgate on
the key, token or Langflow-event path) and returning its figures."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp

from .common import SECRET, STAMP, cpu_seconds, rss_bytes


class Path_:
    """One way to reach the backend: how to start a run, and which process to measure.

    ``kind``: ``plain`` (a GET of the backend's path: direct, nginx, the pipe); on flowgate ``key``
    (the server's path: an API key on the profitbase route, text transcoded to a JSON array),
    ``token`` (the browser's path: a fresh single-use token minted per stream, then the workflow
    route, text passed through) and ``events`` (the browser's path in front of a Langflow-event
    backend: its events transcoded to the workflow route's text)."""

    def __init__(self, name: str, base: str, pid: int | None, kind: str) -> None:
        self.name, self.base, self.pid, self.kind = name, base, pid, kind

    async def request(self, s: aiohttp.ClientSession, flow: str, raw_path: str):
        """(method, url, headers) for the next run of ``flow``."""
        if self.kind == "plain":
            return "GET", self.base + raw_path, {}
        if self.kind == "key":
            return ("POST", f"{self.base}/api/v1/tenants/t/workspaces/w/flows/{flow}/run-streaming",
                    {"x-api-key": SECRET})
        async with s.get(f"{self.base}/api/v1/token", headers={"x-api-key": SECRET}) as r:
            token = (await r.json())["token"]
        if self.kind == "events":
            flow = "wf_events"
        return "POST", f"{self.base}/api/v1/run/{flow}/stream?token={token}", {}


async def stream_once(s, path: Path_, flow: str, raw: str, lat: list | None, ttfb: list[float] | None,
                      with_stamp: bool = False):
    method, url, headers = await path.request(s, flow, raw)
    t0 = time.monotonic_ns()
    seen = 0
    buf = b""
    first = True
    async with s.request(method, url, headers=headers) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{path.name}: {resp.status} {await resp.text()}")
        async for chunk in resp.content.iter_any():
            now = time.monotonic_ns()
            if first and ttfb is not None:
                ttfb.append((now - t0) / 1e6)
                first = False
            buf += chunk
            if lat is not None:
                for m in STAMP.finditer(buf):
                    sent = int(m.group(2))
                    lat.append(((now - sent) / 1e6, sent) if with_stamp else (now - sent) / 1e6)
                    seen += 1
                buf = buf[buf.rfind(b";") + 1:]
    return seen


async def scenario_streams(s, path: Path_, n: int) -> dict:
    lat: list[float] = []
    ttfb: list[float] = []
    c0 = cpu_seconds(path.pid) if path.pid else 0.0
    t0 = time.monotonic()
    lines = await asyncio.gather(*(stream_once(s, path, "wf_lines", "/lines?n=100&ms=20", lat, ttfb)
                                   for _ in range(n)))
    wall = time.monotonic() - t0
    cpu = (cpu_seconds(path.pid) - c0) if path.pid else 0.0
    total = sum(lines)
    lat.sort()
    return {"lines": total, "wall_s": wall, "cpu_us_per_line": cpu * 1e6 / total if path.pid else None,
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "ttfb_p50_ms": statistics.median(ttfb), "latency_ms": lat[:: max(1, len(lat) // 2000)]}


async def scenario_side_by_side(s, path: Path_, beside: Path_, n: int) -> dict:
    """The streams scenario on ``path`` and ``beside`` at once (``n`` streams on each), the two
    proxies sharing their core: each one's CPU per line is its own (the scheduler's count of its
    threads), read over the same seconds, so the shared machine's drift moves both and their ratio
    is steady (run one after the other, nginx's own CPU per line moved 11.0–15.9 µs between rounds).
    Between two gateways (``bench.ab``) that is all. Beside nginx (``bench.run``) it is also
    pessimistic: at twice the load on one core nginx's lines get cheaper and flowgate's do not
    (docs/benchmark.md), so the targets are judged on the streams scenario."""
    lat: list[float] = []
    c0 = cpu_seconds(path.pid), cpu_seconds(beside.pid)
    lines = await asyncio.gather(*(stream_once(s, p, "wf_lines", "/lines?n=100&ms=20", lat, None)
                                   for p in (path, beside) for _ in range(n)))
    cpu = cpu_seconds(path.pid) - c0[0], cpu_seconds(beside.pid) - c0[1]
    mine, theirs = sum(lines[:n]), sum(lines[n:])
    out = {"lines": mine, "cpu_us_per_line": cpu[0] * 1e6 / mine, "beside_cpu_us_per_line": cpu[1] * 1e6 / theirs}
    out["ratio"] = out["cpu_us_per_line"] / out["beside_cpu_us_per_line"]
    return out


async def scenario_latency(s, path: Path_, n: int, ramp_s: float = 2.0) -> dict:
    """``n`` concurrent streams of 40 lines × 250 ms, opened at an even pace over ``ramp_s`` (real
    clients do not arrive in lockstep); one-way latency of the lines sent once all ``n`` are open."""
    lat: list[float] = []

    async def one(delay: float):
        await asyncio.sleep(delay)
        return await stream_once(s, path, "wf_lines1k", "/lines?n=40&ms=250", lat, None, with_stamp=True)

    t0 = time.monotonic_ns()
    lines = await asyncio.gather(*(one(ramp_s * i / n) for i in range(n)))
    steady = t0 + int((ramp_s + 0.5) * 1e9)  # lines sent after the last stream opened (+ margin)
    window = [ms for ms, sent in lat if sent >= steady]
    window.sort()
    return {"streams": n, "lines": sum(lines), "measured_lines": len(window), "p50_ms": window[len(window) // 2],
            "p99_ms": window[int(len(window) * 0.99)], "latency_ms": window[:: max(1, len(window) // 2000)]}


async def scenario_short(s, path: Path_, runs: int, conc: int) -> dict:
    sem = asyncio.Semaphore(conc)

    async def one():
        async with sem:
            await stream_once(s, path, "wf_short", "/lines?n=5&ms=0", None, None)

    c0 = cpu_seconds(path.pid) if path.pid else 0.0
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(runs)))
    wall = time.monotonic() - t0
    cpu = (cpu_seconds(path.pid) - c0) if path.pid else 0.0
    return {"runs": runs, "runs_per_s": runs / wall, "cpu_us_per_run": cpu * 1e6 / runs if path.pid else None}


async def scenario_bulk(s, path: Path_, mb: int) -> dict:
    flow, raw = ("wf_bulk", "/bulk?bytes=1073741824") if mb == 1024 else ("wf_bulk256", "/bulk?bytes=268435456")
    method, url, headers = await path.request(s, flow, raw)
    t0 = time.monotonic()
    size = 0
    async with s.request(method, url, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            size += len(chunk)
    wall = time.monotonic() - t0
    return {"bytes": size, "mb_per_s": size / wall / 1e6}


async def scenario_idle(s, path: Path_, sizes: list[int]) -> dict:
    """Open idle streams up to each of ``sizes`` in turn; RSS growth per open stream at each."""
    out: dict = {}
    responses: list = []
    refused = 0

    async def open_one():
        nonlocal refused
        method, url, headers = await path.request(s, "wf_idle", "/idle")
        try:
            resp = await s.request(method, url, headers=headers)
            await resp.content.readany()
            responses.append(resp)
        except (aiohttp.ClientError, OSError):
            refused += 1

    before = rss_bytes(path.pid) if path.pid else 0
    try:
        for n in sizes:
            while len(responses) + refused < n:
                await asyncio.gather(*(open_one() for _ in range(min(500, n - len(responses) - refused))))
            await asyncio.sleep(1)
            after = rss_bytes(path.pid) if path.pid else 0
            out[str(n)] = {"rss_per_stream_kb": (after - before) / max(1, len(responses)) / 1024 if path.pid else None,
                           "refused": refused}
    finally:
        for r in responses:
            r.close()
        await asyncio.sleep(2)
    return out
