"""A line's CPU split into a per-line part and a per-run part, for nginx and flowgate in one run.

    .venv/bin/python -m bench.split --rounds 3

Every round runs 200 streams of 25 lines and 200 streams of 400 lines (20 ms apart) through each
proxy: nginx (plain lines, as ``make bench`` measures it), flowgate's token path (a fresh token per
stream, a text backend, the workflow route) and flowgate's events path (a fresh token, a Langflow
backend's ``token`` events transcoded to the workflow route's text). A proxy's CPU over a batch of
``n`` streams of ``L`` lines is ``n (a L + b)``: two line counts give ``a``, the CPU of one more line,
and ``b``, the CPU of one more run (the stream's requests, the mint's, the store's work, its access
line). Layout as in ``make bench``: the proxies on core 1, the backend and this load generator on
core 0, the generator's GC off while it measures.

From those it prints what ``make bench`` would see at 100 lines (``a + b / 100``, as a ratio to
nginx's) and the per-run budget: the largest ``b`` with which flowgate's line at 100 lines stays
within a target's ratio (1.3 × for text, 1.5 × for events) of nginx's, its own ``a`` unchanged.
The gap between ``b`` and that budget is what the per-run work must lose for the per-line targets;
the gap between ``a`` and nginx's is what no per-run cut can buy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

from .common import (
    cpu_seconds,
    describe_python,
    flowgate_config,
    free_port,
    gateway_python,
    nginx_binary,
    spawn,
    start_flowgate,
    wait_port,
)
from .run import NGINX_CONF
from .scenarios import Path_, stream_once

SHORT, LONG = 25, 400
TARGETS = {"token": 1.3, "events": 1.5}  # the per-line targets, as ratios to nginx's plain line
FLOWS = {  # (path, flowgate flow id, its backend protocol) per line count
    "plain": {n: (f"/lines?n={n}&ms=20", None, None) for n in (SHORT, LONG)},
    "token": {n: (f"/lines?n={n}&ms=20", f"wf_split_text{n}", "bench") for n in (SHORT, LONG)},
    "events": {n: (f"/events?n={n}&ms=20", f"wf_split_events{n}", "bench_lf") for n in (SHORT, LONG)},
}


def split(short: tuple[float, int], long: tuple[float, int], streams: int) -> tuple[float, float]:
    """(a, b) in µs from the CPU seconds and line counts of a batch of short and of long streams."""
    (c_short, l_short), (c_long, l_long) = short, long
    per_line = (c_long - c_short) / (l_long - l_short)
    per_run = (c_short - per_line * l_short) / streams
    return per_line * 1e6, per_run * 1e6


def _config(tmp: Path, port: int, bport: int) -> Path:
    path = flowgate_config(tmp, port, bport, name="split")
    cfg = yaml.safe_load(path.read_text())
    template = cfg["flows"][0]
    for kind in ("token", "events"):
        for raw, flow, backend in FLOWS[kind].values():
            cfg["flows"].append({**template, "id": flow, "targets": {"Production": {"backend": backend, "path": raw}}})
    path.write_text(yaml.safe_dump(cfg))
    return path


async def _batch(s: aiohttp.ClientSession, path: Path_, kind: str, lines: int, streams: int) -> tuple[float, int]:
    raw, flow, _ = FLOWS[kind][lines]
    gc.collect()
    gc.disable()
    try:
        c0 = cpu_seconds(path.pid)
        seen = await asyncio.gather(*(stream_once(s, path, flow or "", raw, [], None) for _ in range(streams)))
        return cpu_seconds(path.pid) - c0, sum(seen)
    finally:
        gc.enable()


def _fmt(values: list[float], digits: int = 2) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


async def main(args) -> None:
    nginx_bin = nginx_binary()
    if nginx_bin is None:
        sys.exit("nginx is not installed (apt-get install nginx-light)")
    os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-split-"))
    bport, nport, gport = free_port(), free_port(), free_port()
    procs = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, bport=bport, port=nport, ssl="", ssl_lines=""))
    procs.append(spawn([nginx_bin, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], 1))
    nginx = Path_("nginx", f"http://127.0.0.1:{nport}", procs[-1].pid, "plain")
    procs.append(start_flowgate(_config(tmp, gport, bport), 1))
    paths = {"plain": nginx, "token": Path_("flowgate token", f"http://127.0.0.1:{gport}", procs[-1].pid, "token"),
             "events": Path_("flowgate events", f"http://127.0.0.1:{gport}", procs[-1].pid, "token")}
    got: dict[str, list[tuple[float, float]]] = {kind: [] for kind in paths}
    try:
        for port in (bport, nport, gport):
            wait_port(port)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for kind, path in paths.items():  # warm: connections, caches, the store's tables
                await _batch(s, path, kind, SHORT, 50)
            for r in range(args.rounds):
                for kind, path in paths.items():
                    print(f"[{path.name}] {args.streams} streams × {SHORT} and × {LONG} lines, round "
                          f"{r + 1}/{args.rounds} ...", flush=True)
                    short = await _batch(s, path, kind, SHORT, args.streams)
                    long = await _batch(s, path, kind, LONG, args.streams)
                    got[kind].append(split(short, long, args.streams))
    finally:
        for proc in procs:
            proc.terminate()
    print(f"\nflowgate on {describe_python(gateway_python())}; median of {args.rounds} rounds (their spread)\n")
    print("| proxy | µs per line (a) | µs per run (b) | at 100 lines: a + b/100 | / nginx's | per-run budget "
          "for the target |\n|---|---|---|---|---|---|")
    at100 = {kind: [a + b / 100 for a, b in rows] for kind, rows in got.items()}
    for kind, rows in got.items():
        a_s, b_s = [a for a, _ in rows], [b for _, b in rows]
        if kind == "plain":
            ratio = budget = "-"
        else:
            ratio = _fmt([f / n for f, n in zip(at100[kind], at100["plain"], strict=True)])
            budget = (f"≤ {TARGETS[kind]} ×: b ≤ " + _fmt([100 * (TARGETS[kind] * n - a) for n, (a, _)
                                                           in zip(at100["plain"], rows, strict=True)], 0) + " µs")
        print(f"| {paths[kind].name} | {_fmt(a_s)} | {_fmt(b_s, 0)} | {_fmt(at100[kind])} | {ratio} | {budget} |")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=200)
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
