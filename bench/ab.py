"""A/B of CPU per short run between two checkouts of flowgate on this machine: one gateway from
each tree (each with its own ``make install``d ``.venv``), pinned to core 1 side by side, the same
backend and load generator on core 0, rounds alternating between them.

    .venv/bin/python -m bench.ab /path/to/tree-a /path/to/tree-b --kind key --runs 3000 --rounds 4

``--kind`` ``key`` (an API key on the profitbase route), ``token`` (a token minted per run,
then the workflow route) or ``events`` (a token, then a Langflow-event backend transcoded to text);
``--scenario latency`` the p99 line latency of 1,000 streams × 40 lines × 250 ms;
``--scenario streams`` compares CPU per line of 200 streams × 100 lines × 20 ms instead of CPU per
short run, the two gateways in turn; ``--scenario side`` runs them at once (200 streams on each,
both on core 1, read over the same seconds: the steadier comparison of CPU per line, as the
side-by-side figure of ``bench.run``) and prints each round's ratio of the second tree to the first.
A tree whose config schema predates ``server.workers`` gets its config without it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

from .common import flowgate_config, free_port, spawn, wait_port
from .scenarios import Path_, scenario_latency, scenario_short, scenario_side_by_side, scenario_streams


def _config(tmp: Path, tree: Path, port: int, bport: int, name: str) -> Path:
    cfg = flowgate_config(tmp, port, bport, name=name)
    probe = subprocess.run([str(tree / ".venv/bin/python"), "-c", "from proxy.config import ServerConfig as S; "
                            "print('workers' in S.model_fields)"], capture_output=True, text=True, cwd=tree)
    if probe.stdout.strip() != "True":
        raw = yaml.safe_load(cfg.read_text())
        raw["server"].pop("workers", None)
        cfg.write_text(yaml.safe_dump(raw))
    return cfg


def _start(tmp: Path, tree_arg: str, i: int, bport: int, kind: str, procs: list) -> tuple[str, Path_]:
    """One tree's gateway on core 1 (appended to ``procs``)."""
    tree = Path(tree_arg).resolve()
    port = free_port()
    cfg = _config(tmp, tree, port, bport, f"ab{i}")
    proc = subprocess.Popen(["taskset", "-c", "1", str(tree / ".venv/bin/python"), "-m", "proxy", "serve",
                             "--config", str(cfg)], cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(proc)
    return str(tree), Path_(str(tree), f"http://127.0.0.1:{port}", proc.pid, kind)


async def _scenario(s, path: Path_, args) -> dict:
    if args.scenario == "streams":
        return await scenario_streams(s, path, 200)
    if args.scenario == "latency":
        return await scenario_latency(s, path, 1000)
    return await scenario_short(s, path, args.runs, args.conc)


async def main(args) -> None:
    os.sched_setaffinity(0, {0})
    tmp = Path(tempfile.mkdtemp(prefix="flowgate-ab-"))
    bport = free_port()
    procs = [spawn([sys.executable, "-m", "bench.backend", str(bport)], 0)]
    gateways = [_start(tmp, tree, i, bport, args.kind, procs) for i, tree in enumerate(args.trees)]
    try:
        wait_port(bport)
        for _, path in gateways:
            wait_port(int(path.base.rsplit(":", 1)[1]))
        results: dict[str, list[int]] = {tree: [] for tree, _ in gateways}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for _, path in gateways:  # warm
                await scenario_short(s, path, 500, args.conc)
            if args.scenario == "side":
                await _side_by_side(s, gateways, args.rounds)
                return
            for _ in range(args.rounds):
                for tree, path in gateways:
                    gc.collect()  # the load generator's GC off while it measures, as in bench.run (its
                    gc.disable()  # pauses would show as the latency of whichever gateway runs then)
                    try:
                        out = await _scenario(s, path, args)
                    finally:
                        gc.enable()
                    if args.scenario == "streams":
                        results[tree].append(round(out["cpu_us_per_line"], 2))
                    elif args.scenario == "latency":
                        results[tree].append(round(out["p99_ms"], 2))
                    else:
                        results[tree].append(round(out["cpu_us_per_run"]))
        unit = {"streams": "CPU µs per line", "latency": "p99 line latency (ms), 1000 streams"}.get(
            args.scenario, "CPU µs per run")
        for tree, values in results.items():
            print(f"{args.kind} path, {unit}, {tree}: {sorted(values)}")
    finally:
        for proc in procs:
            proc.terminate()


async def _side_by_side(s, gateways: list[tuple[str, Path_]], rounds: int) -> None:
    (tree_a, a), (tree_b, b) = gateways
    ratios: list[float] = []
    lines: dict[str, list[float]] = {f"first ({tree_a})": [], f"second ({tree_b})": []}
    first, second = lines.values()
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            out = await scenario_side_by_side(s, b, a, 200)
        finally:
            gc.enable()
        second.append(round(out["cpu_us_per_line"], 2))
        first.append(round(out["beside_cpu_us_per_line"], 2))
        ratios.append(round(out["ratio"], 3))
    for name, values in lines.items():
        print(f"CPU µs per line, both at once, {name}: {values}")
    print(f"second / first, round by round: {ratios} (median {statistics.median(ratios):.3f})")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs=2)
    ap.add_argument("--kind", choices=["key", "token", "events"], default="key")
    ap.add_argument("--scenario", choices=["short", "streams", "side", "latency"], default="short")
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--conc", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    asyncio.run(main(ap.parse_args()))


if __name__ == "__main__":
    cli()
