"""The ``server`` section of the config: listeners, timers, limits and workers (its model, beside
the other sections' in :mod:`.model`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .tls import TlsConfig

MAX_WORKERS = 256


class Strict(BaseModel):
    """Every config section: unknown keys refused, values frozen once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0 = any free port).")
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above).")
    backlog: int = Field(4096, gt=0, description="Listen backlog; large so bursts of streams are not refused.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on this separate port too (for sidecars)."
    )
    admin_port: int | None = Field(
        None, ge=0, le=65535, description="Serve the admin API (/admin/v1) on this port only, not on `port` "
        "(keep it off the public listener); null = on `port`."
    )
    admin_host: str | None = Field(
        None, description="Address of the admin listener (e.g. 127.0.0.1 or a private interface); default: `host`."
    )
    tls: TlsConfig | None = Field(
        None, description="Serve HTTPS on `port` (ALPN http/1.1); certificate files re-read on SIGHUP. Unset: plain "
        "HTTP (a sidecar, or behind a TLS-terminating proxy)."
    )
    metrics_tls: TlsConfig | None = Field(None, description="Serve HTTPS on `metrics_port` (its own certificate).")
    access_log: bool = Field(True, description="Write one JSON access line per request.")
    workers: int | Literal["auto"] = Field(
        "auto", description="Worker processes serving the listeners (auto = one per usable core: the CPU affinity, "
        "capped by the cgroup's CPU quota, e.g. a container's `cpus:`; 1 = a single process, no supervisor; "
        "memory:// always runs one). Applied at the next restart, not by a reload."
    )
    pid_file: str | None = Field(
        None, description="`flowgate serve` writes its process id here (the supervisor's, with workers); "
        "`flowgate reload` reads it to know whom to signal."
    )
    shutdown_timeout_s: float = Field(
        10.0, ge=0, description="On SIGTERM, how long open streams may go on before they are cut."
    )
    front: Literal["flowgate", "aiohttp"] = Field(
        "flowgate",
        description="Server protocol for the dialect routes: flowgate's own HTTP/1.1 front (less memory and CPU "
        "per run) or aiohttp's. Every other route, and whatever the front does not take, is aiohttp's either way.",
    )
    compiled_text_path: bool = Field(
        True,
        description="Stream `text` backend bodies through flowgate's compiled per-chunk path "
        "(proxy/stream/textpath.pyx, "
        "built by `make install` where a C compiler is found): a chunk is metered, framed and written in C (a "
        "transcoded one still calls its output encoder), policies run only when their limits are crossed. "
        "false: every chunk in Python.",
    )
    client_keepalive_timeout_s: float = Field(
        75.0, gt=0, description="An idle client keep-alive connection is closed after this long."
    )
    client_head_timeout_s: float = Field(
        10.0, gt=0, description="A request head must arrive whole within this long of the connect (or of its first "
        "byte on a keep-alive connection); else 408 and close."
    )
    client_body_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait between two reads of a request body once it is read; else 408 and close."
    )
    client_write_timeout_s: float = Field(
        60.0, gt=0, description="A client that reads nothing of its response for this long is disconnected (also "
        "the most a closed connection may take to flush)."
    )
    client_lingering_s: float = Field(
        5.0, gt=0, description="After an answer sent before the request body was read (401, 413, 408, 400), the "
        "write side is shut and what the client still sends is discarded for this long, then the connection closes."
    )
    max_connections: int = Field(
        10000, gt=0, description="Open client connections per worker; beyond it a new connection is answered 503 "
        "and closed."
    )
    upstream_keepalive: int = Field(
        256, ge=0, description="Idle keep-alive connections kept per backend origin; more are closed when released."
    )
    upstream_keepalive_timeout_s: float = Field(
        15.0, gt=0, description="An idle backend connection older than this is closed instead of reused."
    )
    upstream_max_head_bytes: int = Field(
        65536, ge=1024, description="Largest backend response head (status line, headers, interim 1xx heads) in "
        "bytes; beyond it the run fails with 502 and the connection is dropped."
    )
    upstream_max_headers: int = Field(
        100, ge=1, description="Most header lines in a backend response head; beyond it 502 and the connection is "
        "dropped."
    )
    max_buffered_response_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest backend body a non-streaming run (`.../run`) buffers; beyond it "
        "the gateway stops reading, drops the backend connection and answers 502."
    )

    @model_validator(mode="after")
    def _metrics_tls(self) -> ServerConfig:
        if self.metrics_tls is not None and self.metrics_port is None:
            raise ValueError("metrics_tls is set but metrics_port is not (the listener it is for)")
        return self


    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerConfig:
        ports = [("port", self.port), ("metrics_port", self.metrics_port), ("admin_port", self.admin_port)]
        seen: dict[int, str] = {}
        for name, value in ports:
            if value:  # (0: any free port, never a clash)
                if value in seen and (name != "admin_port" or (self.admin_host or self.host) == self.host):
                    raise ValueError(f"{name} is the same as {seen[value]} ({value})")
                seen.setdefault(value, name)
        if self.admin_host is not None and self.admin_port is None:
            raise ValueError("admin_host needs admin_port (the admin API is on the main listener otherwise)")
        return self

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WORKERS):
            return v
        raise ValueError(f"must be a whole number from 1 to {MAX_WORKERS}, or auto (got {v!r})")

    def worker_count(self) -> int:
        """``workers`` resolved: ``auto`` is the number of cores this process may run on (its CPU
        affinity), or fewer when its cgroup's CPU quota allows fewer (a container's ``cpus:``)."""
        if self.workers != "auto":
            return self.workers
        try:
            cores = max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            cores = max(1, os.cpu_count() or 1)
        quota = cgroup_cpu_limit()
        return min(cores, quota) if quota is not None else cores


def cgroup_cpu_limit(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The CPUs this process's cgroup quota allows, rounded up (``cpu.max`` of cgroup v2, or
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` of v1, the smallest along the path to the root, as
    Go's runtime and libuv read it); None without a quota. Docker's ``--cpus``/compose's ``cpus:``
    set a quota, not an affinity, so ``sched_getaffinity`` alone would count every core of the host."""
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    dirs: list[Path] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2
            dirs += _up(Path(root), path)
        elif "cpu" in controllers.split(","):
            for mount in (Path(root) / controllers, Path(root) / "cpu", Path(root) / "cpu,cpuacct"):
                if mount.is_dir():
                    dirs += _up(mount, path)
                    break
    limits = [n for n in map(_quota, dirs) if n is not None]
    return min(limits) if limits else None


def _up(mount: Path, path: str) -> list[Path]:
    """``mount``/``path`` and each parent up to ``mount`` (in a container, ``path`` may name the
    host's view of the cgroup while ``mount`` is the container's own: then ``mount`` alone is read)."""
    out, here = [], mount / path.strip("/")
    while True:
        out.append(here)
        if here == mount or mount not in here.parents:
            return out if out[-1] == mount else [*out, mount]
        here = here.parent


def _quota(d: Path) -> int | None:
    try:
        raw = (d / "cpu.max").read_text().split()
        quota, period = raw[0], raw[1] if len(raw) > 1 else "100000"
    except (OSError, IndexError):
        try:
            quota, period = (d / "cpu.cfs_quota_us").read_text().strip(), (d / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    try:
        q, p = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None
