"""What a request the gateway answers at once costs it: gateway CPU per request for the CORS
preflight (the floor of a request the front serves), the token mint, a path no route matches
(404, by GET and by HEAD), a wrong method on a run route (405) and ``/healthz``; each over keep-alive connections.

    .venv/bin/python -m bench.answers --requests 4000 --conc 50 --rounds 3

The gateway (the bench's config: SQLite store, metrics, access log) runs alone on core 1, the load
generator (aiohttp) on core 0. The figure is the gateway's CPU (``/proc``) over the requests of one
kind divided by their number; the median and the spread over rounds are printed. An answer a
client can ask for with no credential (404, 405, preflight, healthz) should cost no more than a
valid mint: otherwise a flood of junk is the cheapest way to load a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp

from .common import (
    SECRET,
    cpu_seconds,
    describe_python,
    flowgate_config,
    free_port,
    gateway_python,
    spawn,
    start_flowgate,
    wait_port,
)

RUN = "/api/v1/run/wf_short/stream"
KINDS: dict[str, tuple[str, str, dict[str, str], int]] = {
    # kind: (method, path, headers, expected status)
    "preflight": ("OPTIONS", RUN, {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}, 204),
    "mint": ("GET", "/api/v1/token", {"x-api-key": SECRET}, 200),
    "junk 404": ("GET", "/wp-login.php", {}, 404),
    "junk HEAD 404": ("HEAD", "/.env", {}, 404),
    "wrong method 405": ("PUT", RUN, {}, 405),
    "healthz": ("GET", "/healthz", {}, 200),
}


async def one_kind(s: aiohttp.ClientSession, base: str, pid: int, kind: str, n: int, conc: int) -> float:
    method, path, headers, want = KINDS[kind]
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            async with s.request(method, base + path, headers=headers) as r:
                await r.read()
                if r.status != want:
                    raise RuntimeError(f"{kind}: {r.status}, not {want}")

    c0 = cpu_seconds(pid)
    await asyncio.gather(*(worker() for _ in range(conc)))
    return (cpu_seconds(pid) - c0) * 1e6 / n


async def main(args) -> None:
    os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-answers-"))
    bport, port = free_port(), free_port()
    procs = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    gateway = start_flowgate(flowgate_config(tmp, port, bport, name="answers"), 1)
    procs.append(gateway)
    base = f"http://127.0.0.1:{port}"
    figures: dict[str, list[float]] = {kind: [] for kind in KINDS}
    try:
        wait_port(bport)
        wait_port(port)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.conc)) as s:
            for kind in KINDS:  # warm
                await one_kind(s, base, gateway.pid, kind, 500, args.conc)
            for _ in range(args.rounds):
                for kind in KINDS:
                    figures[kind].append(await one_kind(s, base, gateway.pid, kind, args.requests, args.conc))
    finally:
        for proc in procs:
            proc.terminate()
    print(f"\ngateway CPU per request, {args.requests} keep-alive requests at {args.conc} at once, "
          f"{args.rounds} rounds; flowgate on {describe_python(gateway_python())}\n")
    print("| answer | µs per request (median) | rounds |\n|---|---|---|")
    for kind, values in figures.items():
        print(f"| {kind} | {statistics.median(values):.0f} | {min(values):.0f}–{max(values):.0f} |")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
