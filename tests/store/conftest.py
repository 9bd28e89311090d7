"""Store fixtures: the same contract suite runs over memory, a real SQLite file and real Redis."""

from __future__ import annotations

import uuid

import pytest

from proxy.store import open_store
from tests.conftest import redis_url, require_redis


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request, tmp_path):
    prefix = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        require_redis()
        prefix = f"fgtest{uuid.uuid4().hex[:10]}"
        url = f"{redis_url()}?prefix={prefix}"
    s = open_store(url)
    await s.start()
    yield s
    await s.close()
    if prefix:
        import redis

        r = redis.Redis.from_url(redis_url())
        for key in r.scan_iter(f"{prefix}*"):
            r.delete(key)
