"""The bench's tests: its backend (bench/backend.py) as a process of its own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.common import ROOT, free_port, wait_port


@pytest.fixture
def backend():
    """(port, pid) of a running bench backend."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.backend", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
