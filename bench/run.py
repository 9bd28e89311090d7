"""Side-by-side benchmark: direct (the limit), nginx (proxy_buffering off), flowgate (every policy on).

One command, one run, same workload for every path; the backend and this load generator on core 0,
the proxy alone on core 1 (taskset). Prints a table of ratios and writes ``bench/out/`` (JSON + PNG).

    make bench                                   # or: .venv/bin/python -m bench.run --help

flowgate runs with every policy on: key auth for half the streams (profitbase, text transcoded to
a JSON array), a fresh single-use token for the other half (workflow, text passed through), credit
hold and settle on SQLite, metrics, one JSON access line per request (to /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from .common import SECRET, STAMP, cpu_seconds, flowgate_config, free_port, rss_bytes, spawn, start_flowgate, wait_port

OUT = Path(__file__).resolve().parent / "out"

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
worker_rlimit_nofile 40000;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  upstream backend {{ server 127.0.0.1:{bport}; keepalive 512; }}
  server {{
    listen 127.0.0.1:{port} backlog=16384;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


class Path_:
    """One way to reach the backend: how to start a run, and which process to measure."""

    def __init__(self, name: str, base: str, pid: int | None, kind: str) -> None:
        self.name, self.base, self.pid, self.kind = name, base, pid, kind
        self.i = 0

    async def request(self, s: aiohttp.ClientSession, flow: str, raw_path: str):
        """(method, url, headers) for the next run of ``flow`` (alternating key and token on flowgate)."""
        self.i += 1
        if self.kind == "plain":
            return "GET", self.base + raw_path, {}
        if self.i % 2:
            return ("POST", f"{self.base}/api/v1/tenants/t/workspaces/w/flows/{flow}/run-streaming",
                    {"x-api-key": SECRET})
        async with s.get(f"{self.base}/api/v1/token", headers={"x-api-key": SECRET}) as r:
            token = (await r.json())["token"]
        return "POST", f"{self.base}/api/v1/run/{flow}/stream?token={token}", {}


async def stream_once(s, path: Path_, flow: str, raw: str, lat: list[float] | None, ttfb: list[float] | None):
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
                    lat.append((now - int(m.group(2))) / 1e6)
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
    if path.kind != "plain":
        path.i = 1  # the token half: text passed through untouched
    method, url, headers = await path.request(s, flow, raw)
    t0 = time.monotonic()
    size = 0
    async with s.request(method, url, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            size += len(chunk)
    wall = time.monotonic() - t0
    return {"bytes": size, "mb_per_s": size / wall / 1e6}


async def scenario_idle(s, path: Path_, n: int) -> dict:
    if path.pid is None:
        return {"streams": n, "rss_per_stream_kb": None, "refused": 0}
    before = rss_bytes(path.pid)
    responses = []
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

    for i in range(0, n, 500):
        await asyncio.gather(*(open_one() for _ in range(min(500, n - i))))
    await asyncio.sleep(1)
    after = rss_bytes(path.pid)
    for r in responses:
        r.close()
    await asyncio.sleep(1)
    return {"streams": n, "rss_per_stream_kb": (after - before) / max(1, len(responses)) / 1024, "refused": refused}


def plot(results: dict, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; `make bench` installs it)")
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, r in results.items():
        lat = r["streams"]["latency_ms"]
        a.plot(lat, [i / len(lat) for i in range(len(lat))], label=name)
    a.set_xscale("log")
    a.set_xlabel("one-way line latency (ms)")
    a.set_ylabel("fraction of lines")
    a.set_title("latency CDF, long streams")
    a.legend()
    proxies = [n for n in results if results[n]["streams"]["cpu_us_per_line"] is not None]
    b.bar(proxies, [results[n]["streams"]["cpu_us_per_line"] for n in proxies], color=["#888", "#2a7"])
    b.set_title("proxy CPU per forwarded line (µs)")
    c.bar(proxies, [results[n]["short"]["cpu_us_per_run"] for n in proxies], color=["#888", "#2a7"])
    c.set_title("proxy CPU per short run (µs)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(results: dict) -> str:
    def ratio(v, ref):
        return f"{v / ref:.2f}×" if v and ref else "-"

    ng, fg, d = results.get("nginx"), results["flowgate"], results["direct"]
    rows = [
        ("CPU µs per forwarded line", lambda r: r["streams"]["cpu_us_per_line"]),
        ("CPU µs per short run", lambda r: r["short"]["cpu_us_per_run"]),
        ("line latency p50 (ms)", lambda r: r["streams"]["p50_ms"]),
        ("line latency p99 (ms)", lambda r: r["streams"]["p99_ms"]),
        ("TTFB p50 (ms)", lambda r: r["streams"]["ttfb_p50_ms"]),
        ("short runs/s", lambda r: r["short"]["runs_per_s"]),
        ("bulk MB/s", lambda r: r["bulk"]["mb_per_s"]),
        ("RSS per open stream (kB)", lambda r: r["idle"]["rss_per_stream_kb"]),
    ]
    out = ["| metric | direct | nginx | flowgate | flowgate / nginx | flowgate / direct |", "|---|---|---|---|---|---|"]
    for label, get in rows:
        vals = [get(r) if r else None for r in (d, ng, fg)]
        fmt = [f"{v:.2f}" if isinstance(v, float) else ("-" if v is None else str(v)) for v in vals]
        ratios = f"{ratio(vals[2], vals[1])} | {ratio(vals[2], vals[0])}"
        out.append(f"| {label} | {fmt[0]} | {fmt[1]} | {fmt[2]} | {ratios} |")
    added = fg["streams"]["p99_ms"] - d["streams"]["p99_ms"]
    out.append(f"\nadded p99 line latency over direct: {added:.3f} ms; idle streams refused: "
               f"{fg['idle']['refused']} of {fg['idle']['streams']}")
    return "\n".join(out)


async def main(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    os.sched_setaffinity(0, {0})  # the load generator shares core 0 with the backend
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-bench-"))
    bport, nport, gport = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    paths = [Path_("direct", f"http://127.0.0.1:{bport}", None, "plain")]
    nginx_bin = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)  # noqa: ASYNC240
    if nginx_bin and not args.no_nginx:
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, bport=bport, port=nport))
        procs.append(spawn([nginx_bin, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], 1))
        paths.append(Path_("nginx", f"http://127.0.0.1:{nport}", None, "plain"))
    else:
        print("(nginx not found: apt-get install nginx-light; measuring direct and flowgate only)")
    procs.append(start_flowgate(flowgate_config(tmp, gport, bport), 1))
    paths.append(Path_("flowgate", f"http://127.0.0.1:{gport}", procs[-1].pid, "flowgate"))
    try:
        wait_port(bport)
        wait_port(gport)
        if len(paths) == 3:
            wait_port(nport)
            paths[1].pid = procs[1].pid
        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        results: dict = {}
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
            for p in paths:  # warm each path (connections, caches) before measuring
                await scenario_short(s, p, 200, 50)
            for p in paths:
                print(f"[{p.name}] {args.streams} streams × 100 lines × 20 ms ...", flush=True)
                r = {"streams": await scenario_streams(s, p, args.streams)}
                print(f"[{p.name}] {args.runs} short runs at {args.conc} concurrent ...", flush=True)
                r["short"] = await scenario_short(s, p, args.runs, args.conc)
                print(f"[{p.name}] bulk {args.bulk_mb} MB ...", flush=True)
                r["bulk"] = await scenario_bulk(s, p, args.bulk_mb)
                print(f"[{p.name}] {args.idle} open idle streams ...", flush=True)
                r["idle"] = await scenario_idle(s, p, args.idle)
                results[p.name] = r
        OUT.mkdir(exist_ok=True)
        (OUT / "results.json").write_text(json.dumps(results, indent=1))
        plot(results, OUT / "bench.png")
        print()
        print(table(results))
        print(f"\nplot: {OUT / 'bench.png'}   raw: {OUT / 'results.json'}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=200, help="concurrent long streams (100 lines × 20 ms each)")
    ap.add_argument("--runs", type=int, default=3000, help="short runs")
    ap.add_argument("--conc", type=int, default=100, help="short-run concurrency")
    ap.add_argument("--bulk-mb", type=int, default=1024, choices=[256, 1024])
    ap.add_argument("--idle", type=int, default=2000, help="open idle streams for the memory measurement")
    ap.add_argument("--no-nginx", action="store_true")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
