"""Workers and reload, measured on a real `flowgate serve` (server.workers: 2) in front of bench.backend.

1. 400 short runs (each streams 50 lines, so each spends CPU) spread over both workers; the one
   /metrics counts 400 runs ended; a worker killed with SIGKILL is replaced (how long), and 100 of
   100 runs after it succeed.
2. With a stream open, the config gains a key and a flow and SIGHUP is sent: the new key's 20 runs
   of the new flow (how long from the signal, on which workers); the open stream completes intact;
   then an invalid config plus SIGHUP: nothing changes, and the log line.

Run: python -m bench.workers  (prints the figures; exits non-zero if one is not met)
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml

from .common import ROOT, SECRET, children, cpu_seconds, free_port, no_options, rss_bytes, spawn, wait_port

NEW_SECRET = "fg_bench_reloaded"
URL = "/api/v1/tenants/t/workspaces/w/flows/{}/run-streaming"


def config(tmp: Path, port: int, backend_port: int) -> dict:
    backend = f"http://127.0.0.1:{backend_port}"
    return {
        "server": {"port": port, "workers": 2, "pid_file": str(tmp / "fg.pid"), "shutdown_timeout_s": 5},
        "store": f"sqlite:///{tmp / 'fg.db'}",
        "backends": {"bench": {"url": backend, "protocol": "text"}},
        "accounts": {"bench": {"initial_credits": 10**12}},
        "flows": [{"id": "wf_short", "owner": "bench", "tenant": "t", "workspace": "w",
                   "targets": {"Production": {"backend": "bench", "path": "/lines?n=50&ms=0"}}},
                  {"id": "wf_slow", "owner": "bench", "tenant": "t", "workspace": "w",
                   "targets": {"Production": {"backend": "bench", "path": "/lines?n=60&ms=50"}}}],
        "keys": [{"id": "key_bench", "sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "owner": "bench"}],
    }


def intact(body: bytes, n: int) -> bool:
    """A profitbase JSON array holding lines L0..L(n-1), in order, then its closing bracket."""
    try:
        text = "".join(json.loads(body))
    except ValueError:
        return False
    return [line.split(":")[0] for line in text.split(";\n") if line] == [f"L{i}" for i in range(n)]


class Server:
    def __init__(self, tmp: Path, cfg: dict) -> None:
        self.tmp, self.path, self.log_path = tmp, tmp / "fg.yaml", tmp / "fg.log"
        self.write(cfg)
        self.log = self.log_path.open("wb")
        self.proc = spawn([sys.executable, "-m", "proxy", "serve", "--config", str(self.path)], None,
                          stderr=self.log)
        self.url = f"http://127.0.0.1:{cfg['server']['port']}"

    def write(self, cfg: dict) -> None:
        self.cfg = cfg
        (self.tmp / "fg.tmp").write_text(yaml.safe_dump(cfg))
        (self.tmp / "fg.tmp").replace(self.path)

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
        return out


async def until(cond, step_s: float = 0.005, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not cond():  # noqa: ASYNC110 - polling a log file: no event to wait on
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not log what was expected")
        await asyncio.sleep(step_s)


async def run(session: aiohttp.ClientSession, url: str, flow: str, secret: str = SECRET) -> tuple[int, bytes]:
    async with session.post(url + URL.format(flow), headers={"x-api-key": secret}, json={}) as resp:
        return resp.status, await resp.read()


async def many(session, url, flow, n, secret=SECRET, concurrency=16):
    sem = asyncio.Semaphore(concurrency)

    async def one():
        async with sem:
            return await run(session, url, flow, secret)

    return await asyncio.gather(*(one() for _ in range(n)))


def ended(text: str, flow: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("flowgate_runs_ended_total{") and f'flow="{flow}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def main() -> int:
    ok = True
    tmp = Path(tempfile.mkdtemp(prefix="fg-workers-"))
    backend_port, port = free_port(), free_port()
    backend = spawn([sys.executable, "-m", "bench.backend", str(backend_port)], None)
    wait_port(backend_port)
    server = Server(tmp, config(tmp, port, backend_port))
    try:
        wait_port(port)
        await until(lambda: len(server.events("worker_started")) >= 2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            # --- 1: load over both workers, one /metrics, a SIGKILLed worker ---------------------
            workers = children(server.proc.pid)
            cpu0 = {pid: cpu_seconds(pid) for pid in workers}
            t0 = time.monotonic()
            results = await many(session, server.url, "wf_short", 400)
            took = time.monotonic() - t0
            cpu = {pid: cpu_seconds(pid) - cpu0[pid] for pid in workers}
            good = sum(1 for s, b in results if s == 200 and intact(b, 50))
            await asyncio.sleep(1.5)  # the other worker's metrics snapshot (at most a second old)
            by_worker = Counter(e["worker"] for e in server.events("access") if e.get("flow") == "wf_short")
            async with session.get(server.url + "/metrics") as resp:
                counted = ended(await resp.text(), "wf_short")
            print(f"1. 400 short runs (50 lines each, 16 at a time): {good}/400 intact 200s in {took:.2f} s; "
                  f"runs per worker {dict(sorted(by_worker.items()))}; CPU per worker "
                  f"{ {pid: round(c, 2) for pid, c in cpu.items()} } s; /metrics runs ended: {counted:.0f}")
            print(f"   RSS per worker: { {pid: round(rss_bytes(pid) / 2**20) for pid in workers} } MiB "
                  f"(the supervisor's own: {round(_own_rss(server.proc.pid) / 2**20)} MiB)")
            ok &= good == 400 and counted == 400 and len(by_worker) == 2

            victim = workers[0]
            os.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            while True:
                now = children(server.proc.pid)
                if len(now) == 2 and victim not in now:
                    break
                await asyncio.sleep(0.01)
            replaced = time.monotonic() - t0
            results = await many(session, server.url, "wf_short", 100)
            good = sum(1 for s, b in results if s == 200 and intact(b, 50))
            await asyncio.sleep(1.5)
            async with session.get(server.url + "/metrics") as resp:
                text = await resp.text()
            restarts = [line for line in text.splitlines() if line.startswith("flowgate_worker_restarts_total{")]
            print(f"   SIGKILL worker pid {victim}: replaced in {replaced:.3f} s; then {good}/100 runs 200 and "
                  f"intact; /metrics runs ended {ended(text, 'wf_short'):.0f} (of 500); {restarts}")
            ok &= replaced < 5 and good == 100 and ended(text, "wf_short") == 500

            # --- 2: reload with a stream open ----------------------------------------------------
            opened = asyncio.create_task(run(session, server.url, "wf_slow"))  # 60 lines over 3 s
            await asyncio.sleep(0.5)
            new = copy.deepcopy(server.cfg)
            new["accounts"]["newco"] = {"initial_credits": 10**9}
            new["flows"].append({"id": "wf_new", "owner": "newco", "tenant": "t", "workspace": "w",
                                 "targets": {"Production": {"backend": "bench", "path": "/lines?n=10&ms=0"}}})
            new["keys"].append({"id": "key_new", "sha256": hashlib.sha256(NEW_SECRET.encode()).hexdigest(),
                                "owner": "newco"})
            server.write(new)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGHUP)
            await until(lambda: len(server.events("config_swapped")) >= 2)
            swapped = time.monotonic() - t0
            results = await many(session, server.url, "wf_new", 20, NEW_SECRET, concurrency=20)
            took = time.monotonic() - t0
            good = sum(1 for s, b in results if s == 200 and intact(b, 10))
            status, body = await opened
            await asyncio.sleep(0.3)  # the last access lines
            by_worker = Counter(e["worker"] for e in server.events("access") if e.get("flow") == "wf_new")
            print(f"2. SIGHUP with a key and a flow added: every worker swapped {swapped:.3f} s after the signal; "
                  f"new key on the new flow {good}/20 200 and intact, all done {took:.3f} s after the signal, "
                  f"per worker {dict(sorted(by_worker.items()))}")
            whole = status == 200 and intact(body, 60)
            print(f"   the stream open across the reload: {status}, "
                  f"{'intact (60 of 60 lines, in order)' if whole else 'BROKEN'}")
            ok &= good == 20 and took < 3 and len(by_worker) == 2 and status == 200 and intact(body, 60)

            bad = copy.deepcopy(new)
            bad["flows"][-1]["targets"]["Production"]["backend"] = "ghost"
            server.write(bad)
            server.proc.send_signal(signal.SIGHUP)
            await until(lambda: server.events("reload_refused"))
            await asyncio.sleep(0.3)
            after = await many(session, server.url, "wf_new", 20, NEW_SECRET)
            old = await many(session, server.url, "wf_short", 20)
            refused = server.events("reload_refused")
            print(f"   invalid config + SIGHUP: swaps still {len(server.events('config_swapped'))} (2 = none new); "
                  f"new key {sum(s == 200 for s, _ in after)}/20, old key {sum(s == 200 for s, _ in old)}/20; "
                  f"logged ({len(refused)} line): {json.dumps(refused[0])}")
            ok &= len(refused) == 1 and len(server.events("config_swapped")) == 2
            ok &= all(s == 200 for s, _ in after + old)
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        print(f"   SIGTERM: serve exited {code}")
        ok &= code == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        backend.kill()
    print("all figures met" if ok else "NOT MET")
    return 0 if ok else 1


def _own_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    no_options(__doc__)
    os.chdir(ROOT)
    sys.exit(asyncio.run(main()))
