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
