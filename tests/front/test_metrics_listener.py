"""`server.metrics_port`: the separate metrics listener is served as the main one is (timers, error
answers that quote nothing of the request)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import base_config, free_port

ROOT = Path(__file__).resolve().parents[2]


async def test_the_metrics_listener_is_on_the_fronts_timers_and_quotes_nothing(tmp_path):
    port, mport = free_port(), free_port()
    cfg = base_config("http://127.0.0.1:9", store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["server"] = {**cfg["server"], "port": port, "metrics_port": mport, "access_log": False,
                     "client_head_timeout_s": 1, "client_keepalive_timeout_s": 1}
    path = tmp_path / "fg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", mport)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "no metrics listener"
                await asyncio.sleep(0.1)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()

        silent, _ = await asyncio.open_connection("127.0.0.1", mport)  # says nothing: closed by the timer
        assert await asyncio.wait_for(silent.read(), 4) == b""

        reader, writer = await asyncio.open_connection("127.0.0.1", mport)
        writer.write(b"GET /metrics?api_key=LEAKME_Q&x=\x01 HTTP/1.1\r\nHost: gw\r\nx-api-key: LEAKME_H\x01\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 400") and b"LEAKME" not in answer
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert b"LEAKME" not in err and b"Traceback" not in err
