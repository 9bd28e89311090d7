"""Per-key rate limits, counted in the store so every replica shares them.

``keys[].rate_limit.requests_per_minute`` counts token mints and runs together (a fixed one-minute
window); ``concurrent_runs`` caps the key's open runs (slots expire with the run cap plus a grace,
so a replica that died does not hold them forever). Over a limit: 429 ``rate_limited`` with
``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``Retry-After``.
"""

from __future__ import annotations

import math
import time

from ..config import KeyConfig
from ..errors import RateLimited
from ..run import Run
from .base import Policy

SLOT_GRACE_S = 30.0


def _headers(limit: int, remaining: int, retry_after_s: float | None = None) -> dict[str, str]:
    headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(max(0, remaining))}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
    return headers


async def check_rate(store, key: KeyConfig, headers: dict[str, str]) -> None:
    """Count one request against the key's per-minute limit; fills ``headers``; raises 429 when over."""
    rpm = key.rate_limit.requests_per_minute
    if rpm is None:
        return
    result = await store.rate_hit(f"rpm:{key.id}", rpm, 60)
    if not result.allowed:
        raise RateLimited("rate limit exceeded: too many requests for this key",
                          headers=_headers(rpm, 0, result.retry_after_s))
    headers.update(_headers(rpm, result.remaining))


class RateLimit(Policy):
    name = "rate_limit"

    async def on_request(self, run: Run) -> None:
        key = run.key
        if key is None:
            return
        await check_rate(self.store, key, run.response_headers)
        limit = key.rate_limit.concurrent_runs
        if limit is None:
            return
        assert run.flow is not None
        expires = time.time() + self.config.run_cap_s(run.flow) + SLOT_GRACE_S
        result = await self.store.slot_acquire(f"conc:{key.id}", limit, run.job_id, expires)
        if not result.allowed:
            raise RateLimited("too many concurrent runs for this key",
                              headers=_headers(limit, 0, result.retry_after_s or 1))
        run.extra[self.name] = f"conc:{key.id}"

    async def on_complete(self, run: Run) -> None:
        bucket = run.extra.get(self.name)
        if bucket is not None:
            await self.store.slot_release(bucket, run.job_id)
