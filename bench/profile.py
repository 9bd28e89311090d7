"""Where a short run's CPU goes, step by step: one gateway under py-spy, short runs on the key or
token path, every sample put in the step of the request path it belongs to.

    .venv/bin/python -m bench.profile --kind token --runs 12000

The gateway (SQLite store, metrics, access log: the bench's config) runs alone on core 1, the
backend and load generator on core 0, as in ``make bench``. py-spy samples it (``--nonblocking``:
the process is never paused) while the short-run scenario runs; each sample's stack is read from
its innermost frame outwards and given to the first step one of its frames names (``STEPS``,
innermost match wins, so SQL run inside a settlement counts as the settlement's SQL, not as the
event loop that ran it). A step's share of the samples times the CPU per run measured in the same
run (``/proc``, as the bench reads it) is its CPU per run. Sampling, not tracing: a step under
~2 % is within the noise of one run.

py-spy is a dependency of the bench extra (``make bench`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from .common import describe_python, flowgate_config, free_port, gateway_python, spawn, start_flowgate, wait_port
from .scenarios import Path_, scenario_short

# (step, frame pattern): a frame is "function (file)"; the innermost frame that matches decides
STEPS: list[tuple[str, str]] = [
    ("store: token mint SQL", r"SqliteStore\.put_token"),
    ("store: token spend SQL", r"SqliteStore\.consume_token"),
    ("store: credit hold SQL", r"SqliteStore\.(_opener|open_hold)"),
    ("store: settlement SQL", r"SqliteStore\.settle"),
    ("store: group commit (BEGIN/COMMIT, futures)", r"LoopDatabase\.|proxy/store/__init__"),
    ("access line and request metrics", r"_access_line|structlog|proxy/logging\.py|proxy/metrics\.py"),
    ("token mint request (handler)", r"mint_token|new_token|token_digest"),
    ("stream token spend (policy)", r"StreamToken\."),
    ("credit hold and settlement (policy)", r"Credits\.|HoldSizer|Balances|Chain\.complete|_complete \(proxy/api"),
    ("admission: key, routing (policies)", r"ApiKey\.|Routing\.|RateLimit\.|identify|KeyRing|Chain\.admit"),
    ("backend: request, response head, pool", r"proxy/upstream/|proxy/http1/request\.py|upstream_headers"),
    ("stream: pump, body, framing, ending", r"proxy/stream/|proxy/protocols/|textpath|chunks\.py"),
    ("event loop, sockets, tasks (uvloop, asyncio)", r"asyncio/|_serve_single|uvloop|^$"),
    ("client: response heads", r"start_stream|header_lines|status_line|date_header|_send \(proxy/front"),
    ("client: request head, routing, connection", r"proxy/front/|proxy/http1/"),
    ("run handler, dialect (parse, new run)", r"proxy/api/|proxy/dialects/|proxy/run\.py"),
]
_COMPILED = [(step, re.compile(pattern)) for step, pattern in STEPS]


def classify(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for step, pattern in _COMPILED:
            if pattern.search(frame):
                return step
    return "other"


def shares(raw: Path) -> tuple[Counter, int]:
    """Samples per step from py-spy's ``raw`` (collapsed stacks) output."""
    counts: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        counts[classify(stack)] += int(n)
        total += int(n)
    return counts, total


def _py_spy() -> str:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: make bench (or pip install -e '.[bench]')")
    return spy


def _sample(spy: str, pid: int, rate: int, raw: Path) -> subprocess.Popen:
    sampler = subprocess.Popen([spy, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(raw),
                                "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)  # attached
    return sampler


async def main(args) -> None:
    spy = _py_spy()
    os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-profile-"))
    bport, port = free_port(), free_port()
    procs = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    gateway = start_flowgate(flowgate_config(tmp, port, bport, name="profile"), 1)
    procs.append(gateway)
    raw = tmp / "stacks.txt"
    try:
        wait_port(bport)
        wait_port(port)
        path = Path_("flowgate", f"http://127.0.0.1:{port}", gateway.pid, args.kind)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await scenario_short(s, path, 1000, args.conc)  # warm
            sampler = _sample(spy, gateway.pid, args.rate, raw)
            out = await scenario_short(s, path, args.runs, args.conc)
            sampler.send_signal(2)
            sampler.wait(timeout=30)
    finally:
        for proc in procs:
            proc.terminate()
    counts, total = shares(raw)
    per_run = out["cpu_us_per_run"]
    print(f"\n{args.kind} path: {args.runs} short runs at {args.conc} concurrent, {per_run:.0f} µs of gateway CPU "
          f"per run, {total} samples; flowgate on {describe_python(gateway_python())}\n")
    print("| step | share | µs per run |\n|---|---|---|")
    for step, n in counts.most_common():
        print(f"| {step} | {100 * n / total:.1f} % | {per_run * n / total:.0f} |")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=["key", "token"], default="token")
    ap.add_argument("--runs", type=int, default=12000)
    ap.add_argument("--conc", type=int, default=100)
    ap.add_argument("--rate", type=int, default=1500, help="samples per second")
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
