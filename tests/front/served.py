"""``flowgate serve`` as a real process for the supervisor and reload tests: its config file, its
JSON log lines (stderr, to a file), its workers (the supervisor's children), and runs against it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import base_config, free_port

ROOT = Path(__file__).resolve().parents[2]


def served_config(upstream_url: str, tmp_path: Path, workers: int | str = 2, **server) -> dict:
    cfg = base_config(upstream_url, store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["server"] = {**cfg["server"], "port": free_port(), "workers": workers, "shutdown_timeout_s": 5,
                     "pid_file": str(tmp_path / "fg.pid"), **server}
    return cfg


class Served:
    def __init__(self, tmp_path: Path, cfg: dict) -> None:
        self.cfg = cfg
        self.path = tmp_path / "fg.yaml"
        self.log_path = tmp_path / "fg.log"
        self.write(cfg)
        self.proc: subprocess.Popen | None = None
        self.port = cfg["server"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"

    def write(self, cfg: dict) -> None:
        self.cfg = cfg
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(cfg))
        tmp.replace(self.path)  # the server never reads half a file

    async def start(self, workers: int = 2) -> Served:
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
            [sys.executable, "-m", "proxy", "serve", "--config", str(self.path)], cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=self.log)
        await self.until(lambda: len(self.events("worker_started" if workers > 1 else "listening")) >= max(
            workers, 1), 30, "the workers did not start")
        return self

    async def until(self, cond, within_s: float, what: str):
        deadline = time.monotonic() + within_s
        while True:
            found = cond()
            if found:
                return found
            assert self.proc is None or self.proc.poll() is None, f"the server exited: {self.text()[-2000:]}"
            assert time.monotonic() < deadline, f"{what} within {within_s} s: {self.text()[-2000:]}"
            await asyncio.sleep(0.05)

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == name]

    def workers(self) -> list[int]:
        assert self.proc is not None
        found = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return sorted(int(pid) for pid in found)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, within_s: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + within_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the server did not stop")
            await asyncio.sleep(0.05)
        self.log.close()
        return self.proc.returncode

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def run(session: aiohttp.ClientSession, url: str, secret: str, flow: str = "wf_text") -> tuple[int, bytes]:
    async with session.post(f"{url}/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming",
                            headers={"x-api-key": secret}, json={}) as resp:
        return resp.status, await resp.read()
