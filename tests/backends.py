"""The shared stores the tests run on, each on a real server: SQLite (a file), Redis, a 3-master
Redis Cluster and PostgreSQL.

Where each lives comes from the environment (``.ci/run`` starts them and exports these):
``FLOWGATE_TEST_REDIS`` (redis://127.0.0.1:6379/0), ``FLOWGATE_TEST_REDIS_CLUSTER`` (a seed node,
127.0.0.1:7000: ``.ci/redis-cluster`` forms it) and ``FLOWGATE_TEST_POSTGRES`` (``.ci/postgres``
makes its role and database). A test on a missing server skips with the reason, and fails instead
under REQUIRE_REDIS=1 (Redis, the cluster) or REQUIRE_POSTGRES=1.

Each test gets a namespace of its own on the server (a key prefix, a PostgreSQL schema), removed
after it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ALL = ["memory", "sqlite", "redis", "redis-cluster", "postgres"]
SHARED = ["sqlite", "redis", "redis-cluster", "postgres"]  # several processes may share these


def redis_url() -> str:
    return os.environ.get("FLOWGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_cluster_url() -> str:
    return "redis+cluster://" + os.environ.get("FLOWGATE_TEST_REDIS_CLUSTER", "127.0.0.1:7000")


def postgres_url() -> str:
    return os.environ.get("FLOWGATE_TEST_POSTGRES",
                          "postgresql://flowgate_test:flowgate_test@127.0.0.1:5432/flowgate_test")


def _missing(reason: str, require: str) -> None:
    if os.environ.get(require) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def require_redis() -> None:
    """Skip (with the reason) when Redis is not reachable; fail instead under REQUIRE_REDIS=1."""
    import redis

    try:
        redis.Redis.from_url(redis_url(), socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        _missing(f"Redis not reachable at {redis_url()} ({exc}): start redis-server to run these", "REQUIRE_REDIS")


def cluster_client():
    from redis.cluster import ClusterNode, RedisCluster

    host, _, port = redis_cluster_url().removeprefix("redis+cluster://").split(",")[0].rpartition(":")
    return RedisCluster(startup_nodes=[ClusterNode(host, int(port))], socket_connect_timeout=1)


def require_redis_cluster() -> None:
    """As :func:`require_redis`, for the Redis Cluster (``.ci/redis-cluster`` forms one locally)."""
    import redis
    from redis.exceptions import RedisClusterException

    try:
        client = cluster_client()
        state = client.cluster_info().get("cluster_state")
        client.close()
        if state != "ok":
            raise redis.RedisError(f"cluster_state is {state}")
    except (redis.RedisError, RedisClusterException) as exc:
        _missing(f"Redis Cluster not reachable at {redis_cluster_url()} ({exc}): run .ci/redis-cluster",
                 "REQUIRE_REDIS")


def in_thread(coro_fn):
    """Run ``coro_fn()`` on an event loop of its own (also from inside a running loop)."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = asyncio.run(coro_fn())
        except BaseException as exc:
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def postgres_execute(sql: str):
    import asyncpg

    async def go():
        conn = await asyncpg.connect(postgres_url(), timeout=2)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return in_thread(go)


def require_postgres() -> None:
    """Skip (with the reason) when PostgreSQL is not reachable; fail instead under REQUIRE_POSTGRES=1."""
    try:
        postgres_execute("SELECT 1")
    except Exception as exc:
        _missing(f"PostgreSQL not reachable at {postgres_url().split('@')[-1]} ({type(exc).__name__}: {exc}): "
                 "run .ci/postgres", "REQUIRE_POSTGRES")


def require_backend(kind: str) -> None:
    """Skip or fail (as the REQUIRE_* variables say) when ``kind``'s server is not reachable."""
    {"redis": require_redis, "redis-cluster": require_redis_cluster,
     "postgres": require_postgres}.get(kind, lambda: None)()


@contextmanager
def store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A store URL of ``kind`` with a namespace of its own (removed after)."""
    name = f"fgtest{uuid.uuid4().hex[:10]}"
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
    elif kind == "redis":
        import redis

        require_redis()
        yield f"{redis_url()}?prefix={name}"
        r = redis.Redis.from_url(redis_url())
        for key in r.scan_iter(f"{name}*"):
            r.delete(key)
        r.close()
    elif kind == "redis-cluster":
        require_redis_cluster()
        yield f"{redis_cluster_url()}?prefix={name}"
        client = cluster_client()
        for key in client.scan_iter(f"{name}*", target_nodes=client.PRIMARIES):
            client.delete(key)
        client.close()
    elif kind == "postgres":
        require_postgres()
        yield f"{postgres_url()}?schema={name}"
        postgres_execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    else:
        raise ValueError(kind)


# --- throwaway servers (never the shared ones), for tests that stop and restart them -----------

def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too."""
    import random
    import socket

    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        if port not in ports:
            ports.append(port)
    return ports


def _wait(check, what: str, timeout: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


class ThrowawayCluster:
    """A 3-master Redis Cluster of its own on free ports (with ``replicas`` replicas per master);
    ``stop()`` kills every node, ``start()`` brings them back (their cluster config survives in
    ``dir``, their data does not)."""

    def __init__(self, directory: Path, replicas: int = 0) -> None:
        self.dir = directory
        self.replicas = replicas  # per master
        self.ports = cluster_ports(3 * (1 + replicas))
        self.procs: list = []
        self.formed = False
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        import subprocess

        import redis

        self.procs = [subprocess.Popen(
            ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{p}.conf", "--cluster-node-timeout", "1000",
             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in self.ports]

        def up(port: int) -> bool:
            try:
                return bool(redis.Redis(port=port, socket_connect_timeout=0.2).ping())
            except redis.RedisError:
                return False

        for p in self.ports:
            _wait(lambda p=p: up(p), f"redis-server on {p}")
        if not self.formed:
            subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=30)
            self.formed = True

        def ok() -> bool:
            return all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO")
                       for p in self.ports)

        _wait(ok, "the throwaway cluster")

        def replicas_online() -> bool:
            masters = [p for p in self.ports if redis.Redis(port=p).info("replication")["role"] == "master"]
            return all(redis.Redis(port=p).info("replication").get("connected_slaves", 0) >= self.replicas
                       and all(redis.Redis(port=p).info("replication").get(f"slave{i}", {}).get("state") == "online"
                               for i in range(self.replicas))
                       for p in masters)

        _wait(replicas_online, "the throwaway cluster's replicas", timeout=30)

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


class ThrowawayPostgres:
    """A PostgreSQL server of its own (initdb in ``dir``, a free port, trust auth on loopback);
    ``stop()`` is an immediate shutdown (as a crash), ``start()`` recovers it from its WAL."""

    def __init__(self, directory: Path) -> None:
        import glob

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = bins[-1] if bins else shutil.which("initdb")
        if initdb is None:
            _missing("PostgreSQL's initdb is not installed", "REQUIRE_POSTGRES")
        self.bin = Path(initdb).parent
        # its own directory under /tmp (pytest's tmp_path is not open to the postgres user)
        self.dir = Path(tempfile.mkdtemp(prefix="flowgate-pg-")) / "pgdata"
        self.port = free_ports(1)[0]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._run(str(self.bin / "initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *argv: str) -> None:
        import subprocess

        if self.as_postgres:
            shutil.chown(self.dir.parent, "postgres")
        subprocess.run([*self.as_postgres, *argv], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-w", "-l", str(self.dir.parent / "pg.log"),
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if (self.dir / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir.parent, ignore_errors=True)
