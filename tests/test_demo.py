"""`flowgate demo` (what `make run` starts): the printed curl lines work as printed and stream."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent



@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_demo_curl_lines_work_as_printed(tmp_path):
    port, backend_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "demo", "--port", str(port), "--backend-port", str(backend_port),
         "--dir", str(tmp_path / "demo")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if lines[-1].startswith("curl ") and "/readyz" in lines[-1]:
                break
        commands = [line for line in lines if line.startswith(("curl ", "TOKEN="))]
        assert len(commands) >= 6, lines
        script = "set -euo pipefail\n" + "\n".join(
            f"echo '=== {i}'\n{cmd}\necho" for i, cmd in enumerate(commands))
        out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
        assert out.returncode == 0, out.stderr + out.stdout
        text = out.stdout
        assert text.count("tide pools") >= 4, text  # every run's answer mentions the topic it was sent
        assert '"success":true' in text.replace(" ", "")
        assert '"event": "token"' in text or '"event":"token"' in text
        assert '"status":"ok"' in text.replace(" ", "")
        assert 'flowgate_runs_ended_total{' in text and 'outcome="completed"' in text, text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_demo_backend_is_quiet_when_a_client_goes_away(tmp_path):
    """A client that disconnects mid-answer: no traceback from the demo backend (it happens on every
    cancelled run)."""
    import socket

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "demo-backend", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "demo backend on" in proc.stdout.readline()
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
                assert s.recv(100).startswith(b"HTTP/1.1 200")
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert "Traceback" not in err and err.strip() == "", err


def test_make_run_takes_the_ports():
    done = subprocess.run(["make", "-n", "run", "PORT=8181", "BACKEND_PORT=9191"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert "flowgate demo --port 8181 --backend-port 9191" in done.stdout
