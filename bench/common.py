"""Shared bench plumbing: free ports, pinned processes, CPU and RSS from /proc, a flowgate config."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SECRET = "fg_bench_key"
STAMP = re.compile(rb"L(\d+):(\d+);")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def spawn(cmd: list[str], core: int | None, **kw) -> subprocess.Popen:
    if core is not None and shutil_which("taskset"):
        cmd = ["taskset", "-c", str(core), *cmd]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=kw.pop("stderr", subprocess.DEVNULL),
                            **kw)


def no_options(doc: str | None) -> None:
    """For a bench command that takes no options: ``--help`` prints its docstring and exits, any
    other argument is refused (rather than measuring regardless)."""
    import argparse

    argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()


def nginx_binary() -> str | None:
    """nginx on the PATH, else Debian's ``/usr/sbin/nginx`` (a user's PATH may lack sbin)."""
    return shutil_which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (nginx workers), from /proc: the scheduler's
    nanosecond count of every thread (``/proc/PID/task/TID/schedstat``), else utime + stime in
    clock ticks (10 ms: half a microsecond per line in the streams scenario)."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
            total += sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
            continue
        except (OSError, ValueError, IndexError):
            pass
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def rss_bytes(pid: int) -> int:
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def flowgate_config(tmp: Path, port: int, backend_port: int, *, store: str | None = None,
                    max_duration_s: float = 300, tls: dict | None = None, name: str = "flowgate") -> Path:
    backend = f"http://127.0.0.1:{backend_port}"
    cfg = {
        # one worker: the gateway is pinned to one core, beside nginx with worker_processes 1
        "server": {"host": "127.0.0.1", "port": port, "backlog": 16384, "workers": 1, **({"tls": tls} if tls else {})},
        "store": store or f"sqlite:///{tmp / f'{name}.db'}",
        "backends": {"bench": {"url": backend, "protocol": "text"},
                     "bench_lf": {"url": backend, "protocol": "langflow"}},
        "accounts": {"bench": {"initial_credits": 10**12}},
        "flows": [
            {"id": f"wf_{name}", "owner": "bench", "tenant": "t", "workspace": "w", "max_duration_s": max_duration_s,
             "targets": {"Production": {"backend": backend_name, "path": path}}}
            for name, backend_name, path in [
                ("lines", "bench", "/lines?n=100&ms=20"), ("lines50", "bench", "/lines?n=20&ms=50"),
                ("lines1k", "bench", "/lines?n=40&ms=250"), ("short", "bench", "/lines?n=5&ms=0"),
                ("bulk", "bench", "/bulk?bytes=1073741824"), ("idle", "bench", "/idle"),
                ("forever", "bench", "/lines?n=0&ms=20&id=forever"), ("bulk256", "bench", "/bulk?bytes=268435456"),
                ("events", "bench_lf", "/events?n=100&ms=20")]
        ],
        "keys": [{"id": "key_bench", "sha256": hashlib.sha256(SECRET.encode()).hexdigest(), "owner": "bench"}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def gateway_python() -> str:
    """The interpreter flowgate runs on in the bench: ``FLOWGATE_BENCH_PYTHON`` (``make bench
    BENCH_PYTHON=...`` makes a venv of it with flowgate's dependencies), else this one. Either runs
    this tree's code (``-m proxy`` from the tree, its compiled modules as ``make install`` built them)."""
    return os.environ.get("FLOWGATE_BENCH_PYTHON") or sys.executable


def describe_python(python: str) -> str:
    """The interpreter, its version and how its executable holds the interpreter: CPython built
    with ``--enable-shared`` and no profile-guided build (pyenv's default) runs flowgate ~9 %
    dearer than a distribution's or the official Docker image's optimized build (docs/benchmark.md)."""
    version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    exe = os.path.realpath(subprocess.run([python, "-c", "import sys; print(sys.executable)"], capture_output=True,
                                          text=True, check=True).stdout.strip())
    try:
        libs = subprocess.run(["ldd", exe], capture_output=True, text=True, timeout=10).stdout
        linked = ", libpython a shared library" if "libpython" in libs else ", libpython linked in"
    except (OSError, subprocess.SubprocessError):
        linked = ""
    return f"CPython {version} ({exe}{linked})"


def start_flowgate(cfg: Path, core: int | None) -> subprocess.Popen:
    return spawn([gateway_python(), "-m", "proxy", "serve", "--config", str(cfg)], core)
