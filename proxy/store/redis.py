"""Redis store, shared by many replicas. Every check-and-change is one Lua script.

Keys carry hash tags so a Redis Cluster keeps what one script touches in one slot: everything of
an account (balance hash, holds, hold-expiry index, settled set, ledger) under ``{a:<account>}``,
a token under ``{t:<hash>}``, a rate window under ``{r:<bucket>}``, slots under ``{s:<bucket>}``;
an account's ledger entries by job id (its job records) stay under the account's tag.
Timeouts are short (0.5 s) so that an unreachable Redis turns into StoreUnavailable (503, fail
closed) quickly; the client reconnects by itself when it is back.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from ..errors import StoreUnavailable
from .base import (
    USAGE_KEEP,
    Account,
    Hold,
    Progress,
    RateResult,
    account_seeded,
    key_record,
    usage_sample,
    usage_values,
)
from .redis_scripts import (
    CHECKPOINT,
    CONSUME_TOKEN,
    DELETE_KEY,
    GRANT,
    GROW_HOLD,
    OPEN_HOLD,
    PUT_KEY,
    PUT_TOKEN,
    RATE_HIT,
    SEED,
    SETTLE,
    SLOT_ACQUIRE,
)

log = structlog.get_logger("flowgate.store")
POOL_SIZE = 32
POOL_WAIT_S = 2.0


def _f(x: float) -> str:
    return repr(float(x))


class RedisStore:
    def __init__(self, url: str, prefix: str = "fg", client=None) -> None:
        self.url = url
        self.p = prefix
        self._r = self._client(url) if client is None else client
        reg = self._r.register_script
        self._put_token, self._consume = reg(PUT_TOKEN), reg(CONSUME_TOKEN)
        self._rate, self._slot = reg(RATE_HIT), reg(SLOT_ACQUIRE)
        self._seed, self._grant = reg(SEED), reg(GRANT)
        self._open, self._grow, self._checkpoint, self._settle = (
            reg(OPEN_HOLD), reg(GROW_HOLD), reg(CHECKPOINT), reg(SETTLE))
        self._put_key, self._delete_key = reg(PUT_KEY), reg(DELETE_KEY)

    @staticmethod
    def _client(url: str) -> aioredis.Redis:
        # A bounded pool: each command takes microseconds, so a few dozen connections serve
        # thousands of concurrent runs, and a burst waits for a connection instead of opening
        # hundreds at once (which is what times out under load).
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT_S, socket_timeout=0.5,
            socket_connect_timeout=0.5, retry_on_timeout=False, retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return aioredis.Redis(connection_pool=pool)

    # --- key layout (hash tags keep one account's keys in one cluster slot)
    def _acct(self, a: str) -> str:
        return f"{self.p}:{{a:{a}}}:acct"

    def _hold(self, a: str, job: str) -> str:
        return f"{self.p}:{{a:{a}}}:hold:{job}"

    def _index(self, a: str) -> str:
        return f"{self.p}:{{a:{a}}}:holds"

    def _settled(self, a: str) -> str:
        return f"{self.p}:{{a:{a}}}:settled"

    def _ledger(self, a: str) -> str:
        return f"{self.p}:{{a:{a}}}:ledger"

    def _jobs(self, a: str) -> str:
        return f"{self.p}:{{a:{a}}}:jobs"

    def _usage(self, a: str, flow: str) -> str:
        return f"{self.p}:{{a:{a}}}:usage:{flow}"

    def _keys(self) -> list[str]:
        """The admin API's keys, under one tag: records, hash index, order, version."""
        return [f"{self.p}:{{k}}:{name}" for name in ("keys", "keyhash", "keyorder", "version")]

    def account_keys(self, a: str) -> list[str]:
        return [self._acct(a), self._hold(a, "x"), self._index(a), self._settled(a), self._ledger(a), self._jobs(a)]

    async def _do(self, coro):
        try:
            return await coro
        except ResponseError as exc:  # a script or command bug, not an outage: say so loudly
            log.error("redis_response_error", error=str(exc))
            raise StoreUnavailable("redis: ResponseError") from None
        except RedisError as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None
        except OSError as exc:
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}") from None

    async def start(self) -> None:
        return None  # connects lazily; readyz pings

    async def close(self) -> None:
        await self._r.aclose()
        await self._r.connection_pool.disconnect()

    async def ping(self) -> None:
        await self._do(self._r.ping())

    # --- tokens
    async def put_token(self, token_hash: str, record: dict, expires_at: float) -> None:
        key = f"{self.p}:{{t:{token_hash}}}"
        keep_until_ms = int((expires_at + 60) * 1000)  # report "expired" for a minute, then forget
        await self._do(self._put_token(keys=[key], args=[orjson.dumps(record), _f(expires_at), keep_until_ms]))

    async def consume_token(self, token_hash: str, now: float | None = None) -> tuple[str, dict | None]:
        now = time.time() if now is None else now
        res = await self._do(self._consume(keys=[f"{self.p}:{{t:{token_hash}}}"], args=[_f(now)]))
        status = res[0].decode()
        return (status, orjson.loads(res[1])) if status == "ok" else (status, None)

    # --- rate limits
    async def rate_hit(self, bucket: str, limit: int, window_s: int, now: float | None = None) -> RateResult:
        now = time.time() if now is None else now
        res = await self._do(self._rate(keys=[f"{self.p}:{{r:{bucket}}}"], args=[limit, window_s, _f(now)]))
        return RateResult(bool(res[0]), limit, int(res[1]), float(res[2]))

    async def slot_acquire(self, bucket: str, limit: int, job_id: str, expires_at: float,
                           now: float | None = None) -> RateResult:
        now = time.time() if now is None else now
        res = await self._do(self._slot(keys=[f"{self.p}:{{s:{bucket}}}"],
                                        args=[limit, job_id, _f(expires_at), _f(now)]))
        return RateResult(bool(res[0]), limit, int(res[1]), max(0.0, float(res[2])))

    async def slot_release(self, bucket: str, job_id: str) -> None:
        await self._do(self._r.zrem(f"{self.p}:{{s:{bucket}}}", job_id))

    # --- credits
    async def seed_account(self, account: str, initial: int) -> None:
        await self._do(self._seed(keys=[self._acct(account)], args=[initial]))

    async def grant(self, account: str, amount: int, initial: int = 0) -> int:
        balance, seeded = await self._do(self._grant(keys=[self._acct(account)], args=[amount, initial]))
        if seeded:
            account_seeded(account, initial)
        return int(balance)

    async def get_account(self, account: str, initial: int = 0) -> Account:
        vals = await self._do(self._r.hmget(self._acct(account), "balance", "held", "spent"))
        if vals[0] is None:
            return Account(initial)
        return Account(*(int(v) if v is not None else 0 for v in vals))

    async def open_hold(self, job_id: str, account: str, want: int, expires_at: float, meta: dict,
                        minimum: int = 1, initial: int = 0) -> int:
        keys = [self._acct(account), self._hold(account, job_id), self._index(account), self._settled(account)]
        granted, seeded = await self._do(self._open(
            keys=keys, args=[job_id, want, _f(expires_at), orjson.dumps(meta), minimum, initial]))
        if seeded:
            account_seeded(account, initial)
        return int(granted)

    async def grow_hold(self, job_id: str, account: str, want: int, expires_at: float,
                        reopen: dict | None = None, initial: int = 0) -> int:
        keys = [self._acct(account), self._hold(account, job_id), self._index(account), self._settled(account)]
        meta = b"" if reopen is None else orjson.dumps(reopen)
        granted, seeded = await self._do(self._grow(keys=keys, args=[job_id, want, _f(expires_at), meta, 1, initial]))
        if seeded:
            account_seeded(account, initial)
        return int(granted)

    async def checkpoint(self, progress: Sequence[Progress]) -> None:
        # one pipeline: a batch of any size takes one connection of the pool and two round trips
        # (redis-py checks the script is loaded, then sends every call), not one connection per
        # hold; it returns once every script answered, so the next batch never overtakes one
        if not progress:
            return
        # (``async with``: the pipeline gives its connection back whatever fails, its script check
        # included, which redis-py's execute() runs outside its own clean-up)
        async with self._r.pipeline(transaction=False) as pipe:
            for p in progress:
                await self._checkpoint(**self._checkpoint_call(p), client=pipe)
            await self._do(pipe.execute())

    def _checkpoint_call(self, p: Progress) -> dict:
        """The checkpoint script's keys and arguments for one hold (here and on a cluster)."""
        return {"keys": [self._hold(p.account, p.job_id), self._index(p.account)],
                "args": [p.job_id, p.metered, p.input_tokens, p.output_tokens, _f(p.expires_at)]}

    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None:
        now = time.time() if now is None else now
        sample = usage_sample(entry)
        keys = [self._acct(account), self._hold(account, job_id), self._index(account), self._settled(account),
                self._ledger(account), self._jobs(account), self._usage(account, sample[0] if sample else "-")]
        args = [job_id, "" if charge is None else charge, orjson.dumps(entry), _f(now), account, initial,
                "" if sample is None else sample[1], USAGE_KEEP]
        res = await self._do(self._settle(keys=keys, args=args))
        if not res:
            return None
        if res[1]:
            account_seeded(account, initial)
        return orjson.loads(res[0])

    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]:
        rows = await self._do(self._r.lrange(self._usage(account, flow), 0, min(limit, USAGE_KEEP) - 1))
        return usage_values(rows)

    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]:
        now = time.time() if now is None else now
        out: list[Hold] = []
        for account in accounts:
            jobs = await self._do(self._r.zrangebyscore(self._index(account), "-inf", f"({_f(now)}",
                                                        start=0, num=limit))
            for raw in jobs:
                job = raw.decode()
                h = await self._do(self._r.hgetall(self._hold(account, job)))
                if not h:
                    continue
                out.append(Hold(job, account, int(h[b"amount"]), int(h[b"metered"]), int(h[b"input_tokens"]),
                                int(h[b"output_tokens"]), float(h[b"expires_at"]), orjson.loads(h[b"meta"])))
            if len(out) >= limit:
                break
        return out[:limit]

    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]:
        lo = _f(since) if since is not None else "-inf"
        kwargs = {"start": 0, "num": limit} if limit is not None else {}
        rows = await self._do(self._r.zrangebyscore(self._ledger(account), lo, "+inf", **kwargs))
        return [orjson.loads(r) for r in rows]

    async def ledger_entry(self, account: str, job_id: str) -> dict | None:
        raw = await self._do(self._r.hget(self._jobs(account), job_id))
        return orjson.loads(raw) if raw else None

    # --- keys made through the admin API
    async def put_key(self, record: dict) -> str:
        record = key_record(record)
        res = await self._do(self._put_key(keys=self._keys(), args=[record["id"], record["sha256"],
                                                                    orjson.dumps(record)]))
        return res.decode() if isinstance(res, bytes) else str(res)

    async def delete_key(self, key_id: str) -> bool:
        return bool(await self._do(self._delete_key(keys=self._keys(), args=[key_id])))

    async def list_keys(self) -> list[dict]:
        records, _, order, _ = self._keys()
        ids = await self._do(self._r.zrange(order, 0, -1))
        if not ids:
            return []
        rows = await self._do(self._r.hmget(records, ids))
        return [orjson.loads(r) for r in rows if r]

    async def keys_version(self) -> int:
        raw = await self._do(self._r.get(self._keys()[3]))
        return int(raw) if raw else 0
