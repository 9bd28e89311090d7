"""Side-by-side benchmark: direct (the limit), nginx (proxy_buffering off), a uvloop byte pipe (the
Python floor, streams and bulk only), flowgate (every policy on).

One command, one run, same workload for every path; the backend and this load generator on core 0,
the proxy alone on core 1 (taskset). The streams, latency and short-run scenarios run ``--rounds``
times (3), every path in turn each round, and each figure is the median of its rounds. Prints a
table of ratios and writes ``bench/out/`` (JSON + PNG).

    make bench                                   # or: .venv/bin/python -m bench.run --help

flowgate runs with every policy on: key auth for half the streams (profitbase, text transcoded to
a JSON array), a fresh single-use token for the other half (workflow, text passed through), credit
hold and settle on SQLite, metrics, one JSON access line per request (to /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

from . import tls
from .common import SECRET, STAMP, cpu_seconds, flowgate_config, free_port, rss_bytes, spawn, start_flowgate, wait_port

OUT = Path(__file__).resolve().parent / "out"
PIPE_SCENARIOS = ("streams", "bulk")  # where the byte pipe's numbers mean something (it parses no HTTP)
ROUNDED = ("streams", "latency", "short")  # run --rounds times, path after path, each figure the median

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
    listen 127.0.0.1:{port}{ssl} backlog=16384;{ssl_lines}
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


def merge_rounds(rounds: list[dict]) -> dict:
    """One scenario's rounds on one path as one result: each figure the median of its rounds (the
    rounds' own figures kept under ``rounds``), the latency samples of all rounds together."""
    if len(rounds) == 1:
        return rounds[0]
    out: dict = {}
    for k, v in rounds[0].items():
        values = [r[k] for r in rounds]
        if isinstance(v, list):
            out[k] = sorted(x for r in rounds for x in r[k])
        elif all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
            out[k] = statistics.median(values)
        else:
            out[k] = v
    out["rounds"] = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rounds]
    return out


def plot(results: dict, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; `make bench` installs it)")
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    colors = {"direct": "#444", "nginx": "#888", "pipe": "#bbb", "flowgate": "#2a7"}
    for name, r in results.items():
        color = colors.get(name, "#000")
        for key, style, label in (("streams", "-", "long streams"), ("latency", "--", "many streams")):
            if key not in r:
                continue
            lat = r[key]["latency_ms"]
            a.plot(lat, [i / len(lat) for i in range(len(lat))], style, color=color, label=f"{name}, {label}")
    a.set_xscale("log")
    a.set_xlabel("one-way line latency (ms)")
    a.set_ylabel("fraction of lines")
    a.set_title("latency CDF")
    a.legend(fontsize=7)
    proxies = [n for n in results if n != "direct"]
    bar_colors = [colors.get(n, "#000") for n in proxies]
    b.bar(proxies, [results[n].get("streams", {}).get("cpu_us_per_line") or 0 for n in proxies], color=bar_colors)
    b.set_title("proxy CPU per forwarded line (µs)")
    ran = [n for n in proxies if "short" in results[n]]
    c.bar(ran, [results[n]["short"]["cpu_us_per_run"] or 0 for n in ran], color=[colors.get(n, "#000") for n in ran])
    c.axhline(400, color="#c33", linestyle=":", label="target 400 µs")
    c.legend(fontsize=7)
    c.set_title("proxy CPU per short run (µs)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def table(results: dict, args) -> str:
    """The ratios, and each of issue 6's targets with whether this run met it."""
    d, ng, fg, pipe = results["direct"], results.get("nginx"), results["flowgate"], results.get("pipe")
    top = str(max(args.idle))

    def get(r, *keys):
        for k in keys:
            if r is None or k not in r:
                return None
            r = r[k]
        return r

    rows = [
        ("CPU µs per forwarded line", ("streams", "cpu_us_per_line")),
        ("CPU µs per short run", ("short", "cpu_us_per_run")),
        ("short runs/s", ("short", "runs_per_s")),
        (f"line latency p50, {args.streams} streams (ms)", ("streams", "p50_ms")),
        (f"line latency p99, {args.streams} streams (ms)", ("streams", "p99_ms")),
        (f"line latency p50, {args.latency_streams} streams (ms)", ("latency", "p50_ms")),
        (f"line latency p99, {args.latency_streams} streams (ms)", ("latency", "p99_ms")),
        ("TTFB p50 (ms)", ("streams", "ttfb_p50_ms")),
        (f"bulk {args.bulk_mb} MB (MB/s)", ("bulk", "mb_per_s")),
        *((f"RSS per open stream at {n} (kB)", ("idle", str(n), "rss_per_stream_kb")) for n in args.idle),
    ]

    def fmt(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    def ratio(v, ref):
        return f"{v / ref:.2f}×" if v and ref else "-"

    out = ["| metric | direct | nginx | uvloop pipe | flowgate | flowgate / nginx | flowgate / direct |",
           "|---|---|---|---|---|---|---|"]
    for label, keys in rows:
        vd, vn, vp, vf = get(d, *keys), get(ng, *keys), get(pipe, *keys), get(fg, *keys)
        out.append(f"| {label} | {fmt(vd)} | {fmt(vn)} | {fmt(vp)} | {fmt(vf)} | {ratio(vf, vn)} | {ratio(vf, vd)} |")

    line, nline = get(fg, "streams", "cpu_us_per_line"), get(ng, "streams", "cpu_us_per_line")
    run = get(fg, "short", "cpu_us_per_run")
    p99, dp99 = get(fg, "latency", "p99_ms"), get(d, "latency", "p99_ms")
    rss, refused = get(fg, "idle", top, "rss_per_stream_kb"), get(fg, "idle", top, "refused")
    bulk, nbulk = get(fg, "bulk", "mb_per_s"), get(ng, "bulk", "mb_per_s")
    targets = [  # (name, measured?, shown value, met)
        ("1. CPU per forwarded line ≤ 1.5 × nginx", line and nline,
         lambda: f"{line / nline:.2f}×", lambda: line <= 1.5 * nline),
        ("2. CPU per run ≤ 400 µs (SQLite)", run, lambda: f"{run:.0f} µs", lambda: run <= 400),
        (f"3. added p99 line latency ≤ 1 ms at {args.latency_streams} streams", p99 is not None and dp99 is not None,
         lambda: f"{p99 - dp99:+.2f} ms", lambda: p99 - dp99 <= 1.0),
        (f"4. ≤ 15 kB RSS per open stream at {top}, none refused", rss is not None,
         lambda: f"{rss:.1f} kB, {refused} refused", lambda: rss <= 15 and refused == 0),
        ("5. bulk throughput ≥ nginx", bulk and nbulk, lambda: f"{bulk / nbulk:.2f}×", lambda: bulk >= nbulk),
    ]
    out += ["", "| target | this run | met |", "|---|---|---|"]
    out += [f"| {name} | {value()} | {'yes' if ok() else 'no'} |" if measured else f"| {name} | not run | - |"
            for name, measured, value, ok in targets]
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
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, bport=bport, port=nport, ssl="", ssl_lines=""))
        procs.append(spawn([nginx_bin, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], 1))
        paths.append(Path_("nginx", f"http://127.0.0.1:{nport}", None, "plain"))
    else:
        print("(nginx not found: apt-get install nginx-light; measuring direct and flowgate only)")
    if not args.no_pipe:  # the Python floor: a uvloop byte pipe (streams and bulk only)
        pport = free_port()
        procs.append(spawn([sys.executable, "-m", "bench.pipe", str(bport), str(pport)], 1))
        paths.append(Path_("pipe", f"http://127.0.0.1:{pport}", procs[-1].pid, "plain"))
    procs.append(start_flowgate(flowgate_config(tmp, gport, bport), 1))
    paths.append(Path_("flowgate", f"http://127.0.0.1:{gport}", procs[-1].pid, "flowgate"))
    client_tls = None
    if args.tls:  # the same proxies over HTTPS (bench/tls.py)
        cert, key, client_tls = tls.make_certs(tmp)
        if nginx_bin and not args.no_nginx:
            (tmp / "tls").mkdir()
            tport = free_port()
            ssl_lines = tls.NGINX_TLS.format(cert=cert, key=key)
            (tmp / "tls" / "nginx.conf").write_text(NGINX_CONF.format(
                tmp=tmp / "tls", bport=bport, port=tport, ssl=" ssl", ssl_lines=ssl_lines))
            procs.append(spawn([nginx_bin, "-c", str(tmp / "tls" / "nginx.conf"), "-p", str(tmp / "tls")], 1))
            paths.append(Path_("nginx-tls", f"https://127.0.0.1:{tport}", procs[-1].pid, "plain"))
        tgport = free_port()
        procs.append(start_flowgate(flowgate_config(tmp, tgport, bport, name="flowgate-tls",
                                                    tls={"cert_file": str(cert), "key_file": str(key)}), 1))
        paths.append(Path_("flowgate-tls", f"https://127.0.0.1:{tgport}", procs[-1].pid, "flowgate"))
    try:
        for p in paths:
            wait_port(int(p.base.rsplit(":", 1)[1]))
        if any(p.name == "nginx" for p in paths):
            paths[1].pid = procs[1].pid  # nginx's master (its worker is a child: cpu_seconds adds it)
        conn = aiohttp.TCPConnector(limit=0, force_close=False, ssl=client_tls or True)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
            for p in paths:  # warm each path (connections, caches) before measuring
                if p.name != "pipe":
                    await scenario_short(s, p, 200, 50)
            # scenario by scenario, every path in turn, so that no path always runs against a load
            # generator that has aged through the others' scenarios; the generator's own GC is off
            # while measuring (its pauses would show up as latency of whichever path runs then)
            results: dict = {p.name: {} for p in paths}
            steps = [
                ("streams", f"{args.streams} streams × 100 lines × 20 ms",
                 lambda p, s: scenario_streams(s, p, args.streams)),
                ("latency", f"{args.latency_streams} streams × 40 lines × 250 ms",
                 lambda p, s: scenario_latency(s, p, args.latency_streams)),
                ("short", f"{args.runs} short runs at {args.conc} concurrent",
                 lambda p, s: scenario_short(s, p, args.runs, args.conc)),
                ("bulk", f"bulk {args.bulk_mb} MB", lambda p, s: scenario_bulk(s, p, args.bulk_mb)),
                ("idle", f"{', '.join(map(str, args.idle))} open idle streams",
                 lambda p, s: scenario_idle(s, p, args.idle)),
            ]
            for key, label, run in steps:
                if args.only and key not in args.only:
                    continue
                rounds = args.rounds if key in ROUNDED else 1
                per_path: dict[str, list[dict]] = {}
                for r in range(rounds):
                    for p in paths:
                        if key == "idle" and p.pid is None:
                            continue  # no proxy process to measure
                        if p.name == "pipe" and key not in PIPE_SCENARIOS:
                            continue
                        print(f"[{p.name}] {label}" + (f", round {r + 1}/{rounds}" if rounds > 1 else "") + " ...",
                              flush=True)
                        gc.collect()
                        gc.disable()
                        try:
                            # each scenario on each path gets its own client connections, closed after:
                            # one scenario's leftovers (1,000 idle keep-alive connections after the
                            # latency one, cycled through in turn by aiohttp's pool) must not load the next
                            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                                    limit=0, ssl=client_tls or True),
                                                             timeout=s.timeout) as own:
                                per_path.setdefault(p.name, []).append(await run(p, own))
                        finally:
                            gc.enable()
                        await asyncio.sleep(0.5)  # the closed connections are gone on every side
                for name, rounds_done in per_path.items():
                    results[name][key] = merge_rounds(rounds_done)
        OUT.mkdir(exist_ok=True)
        (OUT / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
        plot(results, OUT / "bench.png")
        print()
        print(table(results, args))
        if args.tls:
            print("\nTLS on the listener (each proxy's HTTPS run / its plain run):\n" + tls.table(results))
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
    ap.add_argument("--latency-streams", type=int, default=1000, help="concurrent streams for the p99 latency target")
    ap.add_argument("--idle", type=lambda v: [int(x) for x in v.split(",")], default=[5000, 9000],
                    help="open idle streams for the memory measurement, comma-separated steps")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the streams, latency and short-run scenarios, path after path in turn; "
                         "each figure is the median of its rounds (this machine's CPU readings move ±15%% "
                         "between rounds)")
    ap.add_argument("--no-nginx", action="store_true")
    ap.add_argument("--no-pipe", action="store_true", help="leave out the uvloop byte pipe (the Python floor)")
    ap.add_argument("--tls", action="store_true", help="also nginx and flowgate over HTTPS (bench/tls.py)")
    ap.add_argument("--only", type=lambda v: v.split(","), default=None,
                    help="run only these scenarios (streams,latency,short,bulk,idle), e.g. while profiling")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
