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

import orjson
import redis.asyncio as aioredis
import structlog
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from ..errors import StoreUnavailable
from .base import USAGE_KEEP, Account, Hold, RateResult, account_seeded, usage_sample, usage_values

PUT_TOKEN = """
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'exp', ARGV[2], 'used', '0')
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""

CONSUME_TOKEN = """
local h = redis.call('HMGET', KEYS[1], 'record', 'exp', 'used')
if not h[1] then return {'unknown'} end
if tonumber(h[2]) <= tonumber(ARGV[1]) then return {'expired'} end
if h[3] == '1' then return {'used'} end
redis.call('HSET', KEYS[1], 'used', '1')
return {'ok', h[1]}
"""

RATE_HIT = """
local limit, win, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if now >= start + win then start = now; count = 0 end
local retry = start + win - now
if count >= limit then return {0, 0, tostring(retry)} end
redis.call('HSET', KEYS[1], 'start', string.format('%.6f', start), 'count', count + 1)
redis.call('PEXPIREAT', KEYS[1], math.ceil((start + win) * 1000))
return {1, limit - count - 1, tostring(retry)}
"""

SLOT_ACQUIRE = """
local limit, now = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
local exists = redis.call('ZSCORE', KEYS[1], ARGV[2])
local n = redis.call('ZCARD', KEYS[1])
if (not exists) and n >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 0, tostring(tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
local want = math.ceil((tonumber(ARGV[3]) - now) * 1000)
if ttl < want then redis.call('PEXPIRE', KEYS[1], want) end
return {1, limit - redis.call('ZCARD', KEYS[1]), '0'}
"""

SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'balance', ARGV[1], 'held', 0, 'spent', 0)
end
return 1
"""

# Every script that may create an account creates a missing one from its initial credits (the
# last ARGV) and says so: a Redis that lost its data behaves as after a gateway restart.
ENSURE_ACCOUNT = """
local function ensure_account(key, initial)
  if redis.call('EXISTS', key) == 1 then return 0 end
  redis.call('HSET', key, 'balance', initial, 'held', 0, 'spent', 0)
  return 1
end
"""

GRANT = ENSURE_ACCOUNT + """
local seeded = ensure_account(KEYS[1], ARGV[2])
return {redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1]), seeded}
"""

# KEYS: account, hold, hold-expiry index, settled set; ARGV: job, want, expires_at, meta, minimum, initial
OPEN = ENSURE_ACCOUNT + """
local function open_hold()
  if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return {0, 0} end
  local seeded = ensure_account(KEYS[1], ARGV[6])
  local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
  local avail = tonumber(acct[1] or '0') - tonumber(acct[2] or '0')
  if avail <= 0 or avail < tonumber(ARGV[5]) then return {0, seeded} end
  local g = math.min(tonumber(ARGV[2]), avail)
  redis.call('HINCRBY', KEYS[1], 'held', g)
  redis.call('HSET', KEYS[2], 'amount', g, 'metered', 0, 'input_tokens', 0, 'output_tokens', 0,
             'expires_at', ARGV[3], 'meta', ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  return {g, seeded}
end
"""

OPEN_HOLD = OPEN + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {tonumber(redis.call('HGET', KEYS[2], 'amount')), 0} end
return open_hold()
"""

# as OPEN_HOLD's, ARGV[4] (meta) '' when a lost hold is not to be opened again
GROW_HOLD = OPEN + """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if ARGV[4] == '' then return {0, 0} end
  return open_hold()  -- lost with the store's data
end
local seeded = ensure_account(KEYS[1], ARGV[6])
local acct = redis.call('HMGET', KEYS[1], 'balance', 'held')
local avail = tonumber(acct[1] or '0') - tonumber(acct[2] or '0')
local g = math.max(0, math.min(tonumber(ARGV[2]), avail))
redis.call('HINCRBY', KEYS[1], 'held', g)
redis.call('HINCRBY', KEYS[2], 'amount', g)
redis.call('HSET', KEYS[2], 'expires_at', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return {g, seeded}
"""

CHECKPOINT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'metered', ARGV[2], 'input_tokens', ARGV[3], 'output_tokens', ARGV[4],
           'expires_at', ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""

SETTLE = ENSURE_ACCOUNT + """
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then return false end
local seeded = ensure_account(KEYS[1], ARGV[6])
local entry = cjson.decode(ARGV[3])
local h = redis.call('HGETALL', KEYS[2])
local hold = {}
for i = 1, #h, 2 do hold[h[i]] = h[i + 1] end
local amount = 0
if hold['amount'] then
  amount = tonumber(hold['amount'])
  local base = cjson.decode(hold['meta'])
  base['input_tokens'] = tonumber(hold['input_tokens'])
  base['output_tokens'] = tonumber(hold['output_tokens'])
  for k, v in pairs(entry) do base[k] = v end
  entry = base
end
local charge
if ARGV[2] == '' then charge = tonumber(hold['metered'] or '0') else charge = tonumber(ARGV[2]) end
entry['job_id'] = ARGV[1]
entry['owner'] = ARGV[5]
entry['credits'] = charge
if entry['ended_at'] == nil or entry['ended_at'] == cjson.null then entry['ended_at'] = tonumber(ARGV[4]) end
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
redis.call('HINCRBY', KEYS[1], 'held', 0 - math.min(amount, math.max(held, 0)))  -- never below 0; never -0
redis.call('HINCRBY', KEYS[1], 'balance', 0 - charge)
redis.call('HINCRBY', KEYS[1], 'spent', charge)
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
local encoded = cjson.encode(entry)
redis.call('ZADD', KEYS[5], entry['ended_at'], encoded)
redis.call('HSET', KEYS[6], ARGV[1], encoded)
if ARGV[7] ~= '' then  -- a completed run: its flow's recent usage, newest first
  redis.call('LPUSH', KEYS[7], ARGV[7])
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[8]) - 1)
end
return {encoded, seeded}
"""


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

    async def checkpoint(self, job_id: str, account: str, metered: int, input_tokens: int, output_tokens: int,
                         expires_at: float) -> None:
        keys = [self._hold(account, job_id), self._index(account)]
        await self._do(self._checkpoint(keys=keys, args=[job_id, metered, input_tokens, output_tokens,
                                                         _f(expires_at)]))

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
