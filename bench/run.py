"""Side-by-side benchmark: direct (the limit), nginx (proxy_buffering off), a uvloop byte pipe (the
Python floor, streams and bulk only), flowgate (every policy on).

One command, one run, same workload for every path; the backend and this load generator on core 0,
the proxy alone on core 1 (taskset). The streams, latency and short-run scenarios run ``--rounds``
times (3), every path in turn each round, and each figure is the median of its rounds. The
side-by-side scenario runs each flowgate path's streams and nginx's at once on core 1 (both read
over the same seconds: a steadier ratio, but a pessimistic one, shown beside the streams
scenario's, on which targets 1 and 2 are judged: docs/benchmark.md). Prints a
table of ratios and writes ``bench/out/`` (JSON + PNG).

    make bench                                   # or: .venv/bin/python -m bench.run --help

flowgate runs with every policy on (credit hold and settle on SQLite, metrics, one JSON access
line per request, to /dev/null) and is measured on three paths, each a column of its own:

- ``flowgate key``: the server's path, an API key on the profitbase route (text transcoded to a
  JSON array);
- ``flowgate token``: the browser's path, a fresh single-use token minted for every stream (the
  mint is counted in the run's CPU), then the workflow route (text passed through);
- ``flowgate events``: the browser's path in front of a Langflow-event backend (streams only):
  the same lines as Langflow ``token`` events, transcoded to the workflow route's text; nginx
  beside it passes the plain lines.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from . import tls
from .common import (
    describe_python,
    flowgate_config,
    free_port,
    gateway_python,
    nginx_binary,
    spawn,
    start_flowgate,
    wait_port,
)
from .report import FLOWGATE, merge_rounds, plot, table
from .scenarios import (
    Path_,
    scenario_bulk,
    scenario_idle,
    scenario_latency,
    scenario_short,
    scenario_side_by_side,
    scenario_streams,
)

OUT = Path(__file__).resolve().parent / "out"
# which paths run which scenario (a flowgate path not named runs none of it)
TLS = ("nginx-tls", "flowgate-tls")  # with --tls
SCENARIO_PATHS = {
    "streams": ("direct", "nginx", "pipe", *FLOWGATE, *TLS),
    "side": FLOWGATE,  # each beside nginx, at once (scenario_side_by_side)
    "latency": ("direct", "nginx", "flowgate key", "flowgate token", *TLS),
    "short": ("direct", "nginx", "flowgate key", "flowgate token", *TLS),
    "bulk": ("direct", "nginx", "pipe", "flowgate token", *TLS),  # the pipe: where its numbers mean something
    "idle": ("nginx", "pipe", "flowgate token"),  # one process: RSS measured once
}
ROUNDED = ("streams", "side", "latency", "short")  # run --rounds times, path after path, each figure the median

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


async def main(args) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
    os.sched_setaffinity(0, {0})  # the load generator shares core 0 with the backend
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-bench-"))
    bport, nport, gport = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen] = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    paths = [Path_("direct", f"http://127.0.0.1:{bport}", None, "plain")]
    nginx_bin = nginx_binary()
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
    for name in FLOWGATE:
        paths.append(Path_(name, f"http://127.0.0.1:{gport}", procs[-1].pid, name.split()[1]))
    client_tls = None
    if args.tls:  # the same proxies over HTTPS (bench/tls.py); flowgate on the token path
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
        paths.append(Path_("flowgate-tls", f"https://127.0.0.1:{tgport}", procs[-1].pid, "token"))
    try:
        for p in paths:
            wait_port(int(p.base.rsplit(":", 1)[1]))
        if any(p.name == "nginx" for p in paths):
            paths[1].pid = procs[1].pid  # nginx's master (its worker is a child: cpu_seconds adds it)
        conn = aiohttp.TCPConnector(limit=0, force_close=False, ssl=client_tls or True)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
            for p in paths:  # warm each path (connections, caches) before measuring
                if p.name in SCENARIO_PATHS["short"]:
                    await scenario_short(s, p, 200, 50)
            # scenario by scenario, every path in turn, so that no path always runs against a load
            # generator that has aged through the others' scenarios; the generator's own GC is off
            # while measuring (its pauses would show up as latency of whichever path runs then)
            results: dict = {p.name: {} for p in paths}
            nginx = next((p for p in paths if p.name == "nginx"), None)
            steps = [
                ("streams", f"{args.streams} streams × 100 lines × 20 ms",
                 lambda p, s: scenario_streams(s, p, args.streams)),
                ("side", f"{args.streams} streams × 100 lines × 20 ms, and as many on nginx at once",
                 lambda p, s: scenario_side_by_side(s, p, nginx, args.streams)),
                ("latency", f"{args.latency_streams} streams × 40 lines × 250 ms",
                 lambda p, s: scenario_latency(s, p, args.latency_streams)),
                ("short", f"{args.runs} short runs at {args.conc} concurrent",
                 lambda p, s: scenario_short(s, p, args.runs, args.conc)),
                ("bulk", f"bulk {args.bulk_mb} MB", lambda p, s: scenario_bulk(s, p, args.bulk_mb)),
                ("idle", f"{', '.join(map(str, args.idle))} open idle streams",
                 lambda p, s: scenario_idle(s, p, args.idle)),
            ]
            for key, label, run in steps:
                if args.only and key not in args.only or key == "side" and nginx is None:
                    continue
                rounds = args.rounds if key in ROUNDED else 1
                per_path: dict[str, list[dict]] = {}
                for r in range(rounds):
                    for p in paths:
                        if p.name not in SCENARIO_PATHS[key]:
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
                                    limit=0, ssl=client_tls or True), timeout=s.timeout) as own:
                                per_path.setdefault(p.name, []).append(await run(p, own))
                        finally:
                            gc.enable()
                        await asyncio.sleep(0.5)  # the closed connections are gone on every side
                for name, rounds_done in per_path.items():
                    results[name][key] = merge_rounds(rounds_done)
        OUT.mkdir(exist_ok=True)
        interpreter = describe_python(gateway_python())
        (OUT / "results.json").write_text(json.dumps({"args": vars(args), "gateway_python": interpreter,
                                                      "results": results}, indent=1))
        plot(results, OUT / "bench.png")
        print()
        print(f"flowgate on {interpreter}\n")
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
                    help="run only these scenarios (streams,side,latency,short,bulk,idle), e.g. while profiling")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
