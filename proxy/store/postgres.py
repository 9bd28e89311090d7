"""PostgreSQL store: many replicas, a durable ledger an operator queries with SQL.

asyncpg, pooled (each replica holds at most :data:`POOL_SIZE` connections). Every check-and-change
is one statement or one transaction: a token is spent by one conditional ``UPDATE ... RETURNING``;
the credit operations of one account (open, grow, settle, grant) run in a transaction that first
takes a transaction-scoped advisory lock on the account's name, so they are serialized per account
across every replica as the Redis store's per-account scripts are, and holds and the ledger never
disagree (a settle racing a late open of the same job cannot leave a hold behind). Rate windows
and concurrency slots are locked per bucket the same way. The tables and their migrations:
:mod:`proxy.store.postgres_schema`.

An unreachable database raises :class:`~proxy.errors.StoreUnavailable` (503, fail closed) within
about a second (connect timeout); the pool reconnects by itself. A database down at start is
migrated on first use; a schema dropped under a running gateway is made again on the next call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg
import orjson
import structlog

from ..errors import StoreUnavailable
from .base import (
    USAGE_KEEP,
    Account,
    Hold,
    Progress,
    RateResult,
    account_seeded,
    key_record,
    ledger_entry,
    usage_sample,
    usage_values,
)
from .postgres_schema import migrate, quoted
from .postgres_sql import (
    HOLD_COLUMNS,
    LOCK_ACCOUNT,
    LOCK_KEYS,
    LOCK_SLOTS,
    LOCK_WINDOW,
    advisory_lock,
    ensure_account,
    hold_of,
    json_text,
    open_hold_in,
)
from .urls import parse_pg_url

log = structlog.get_logger("flowgate.store")

POOL_SIZE = 10
CONNECT_TIMEOUT_S = 1.0
ACQUIRE_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0
PURGE_EVERY = 1000

# what an outage looks like (anything else from the server is a bug: logged loudly, still a 503)
OUTAGE = (OSError, asyncio.TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
          asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError)

class PostgresStore:
    def __init__(self, url: str) -> None:
        self.dsn, self.schema = parse_pg_url(url)
        self._pool: asyncpg.Pool | None = None
        self._migrated = False
        self._migrating, self._migrations_tried = asyncio.Lock(), 0  # waiters share an attempt's failure
        self._writes = 0

    async def start(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S, max_inactive_connection_lifetime=60,
                server_settings={"search_path": quoted(self.schema), "application_name": "flowgate"})
        try:
            await self._ready()
        except StoreUnavailable as exc:  # runs answer 503 until it is back; migrated on first use
            log.warning("store_unavailable_at_start", store="postgresql", error=exc.detail)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _ready(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not started")
        if not self._migrated:
            tried = self._migrations_tried
            async with self._migrating:
                if not self._migrated:
                    if self._migrations_tried != tried:  # one failed while this call waited: fail as it did
                        raise StoreUnavailable("postgresql: not migrated yet (the database did not answer)")
                    self._migrations_tried += 1
                    await self._with(lambda conn: migrate(conn, self.schema), transaction=False)
                    self._migrated = True
        return self._pool

    async def _with(self, fn, transaction: bool = True):
        """``await fn(conn)`` on a pooled connection (in a transaction unless told otherwise)."""
        if self._pool is None:
            raise StoreUnavailable("the store is not started")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except OUTAGE as exc:
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}") from None
        except asyncpg.UndefinedTableError as exc:  # someone dropped our schema: made again on the next call
            log.error("postgres_schema_missing", error=str(exc))
            self._migrated = False
            raise StoreUnavailable("postgresql: the schema is missing") from None
        except asyncpg.PostgresError as exc:  # a query bug or a damaged schema, not an outage: say so loudly
            log.error("postgres_error", error=type(exc).__name__, detail=str(exc))
            raise StoreUnavailable(f"postgresql: {type(exc).__name__}") from None

    async def _run(self, fn, transaction: bool = True):
        await self._ready()
        return await self._with(fn, transaction)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.fetchval("SELECT 1"), transaction=False)

    # --- tokens
    async def put_token(self, token_hash: str, record: dict, expires_at: float) -> None:
        self._writes += 1
        purge = self._writes % PURGE_EVERY == 0

        async def fn(conn) -> None:
            await conn.execute(
                "INSERT INTO tokens (hash, record, expires_at) VALUES ($1, $2, $3) ON CONFLICT (hash) DO UPDATE "
                "SET record = excluded.record, expires_at = excluded.expires_at, used = false",
                token_hash, json_text(record), expires_at)
            if purge:  # tokens report "expired" for an hour, then are forgotten; old rate windows too
                now = time.time()
                await conn.execute("DELETE FROM tokens WHERE expires_at < $1", now - 3600)
                await conn.execute("DELETE FROM windows WHERE start < $1", now - 86400)

        await self._run(fn)

    async def consume_token(self, token_hash: str, now: float | None = None) -> tuple[str, dict | None]:
        now = time.time() if now is None else now
        # one statement: marked used only if unused and unexpired; else what it found (the CTE's
        # UPDATE is not visible to the statement's own SELECT, which sees the row as it was)
        row = await self._run(lambda conn: conn.fetchrow(
            "WITH spent AS (UPDATE tokens SET used = true WHERE hash = $1 AND NOT used AND expires_at > $2 "
            "RETURNING record) "
            "SELECT 'ok', record FROM spent UNION ALL "
            "SELECT CASE WHEN expires_at <= $2 THEN 'expired' ELSE 'used' END, NULL FROM tokens "
            "WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM spent)", token_hash, now), transaction=False)
        if row is None:
            return "unknown", None
        return (row[0], orjson.loads(row[1])) if row[0] == "ok" else (row[0], None)

    # --- rate limits
    async def rate_hit(self, bucket: str, limit: int, window_s: int, now: float | None = None) -> RateResult:
        now = time.time() if now is None else now

        async def fn(conn) -> RateResult:
            await advisory_lock(conn, LOCK_WINDOW, bucket)
            row = await conn.fetchrow("SELECT start, count FROM windows WHERE bucket = $1", bucket)
            start, count = (row[0], row[1]) if row is not None else (now, 0)
            if now >= start + window_s:
                start, count = now, 0
            retry = start + window_s - now
            if count >= limit:
                return RateResult(False, limit, 0, retry)
            await conn.execute("INSERT INTO windows (bucket, start, count) VALUES ($1, $2, $3) ON CONFLICT (bucket) "
                               "DO UPDATE SET start = excluded.start, count = excluded.count", bucket, start, count + 1)
            return RateResult(True, limit, limit - count - 1, retry)

        return await self._run(fn)

    async def slot_acquire(self, bucket: str, limit: int, job_id: str, expires_at: float,
                           now: float | None = None) -> RateResult:
        now = time.time() if now is None else now

        async def fn(conn) -> RateResult:
            await advisory_lock(conn, LOCK_SLOTS, bucket)
            await conn.execute("DELETE FROM slots WHERE bucket = $1 AND expires_at <= $2", bucket, now)
            rows = await conn.fetch("SELECT job_id, expires_at FROM slots WHERE bucket = $1", bucket)
            held = {r[0] for r in rows}
            if job_id not in held and len(held) >= limit:
                return RateResult(False, limit, 0, max(0.0, min(r[1] for r in rows) - now))
            await conn.execute("INSERT INTO slots (bucket, job_id, expires_at) VALUES ($1, $2, $3) "
                               "ON CONFLICT (bucket, job_id) DO UPDATE SET expires_at = excluded.expires_at",
                               bucket, job_id, expires_at)
            return RateResult(True, limit, limit - len(held | {job_id}), 0.0)

        return await self._run(fn)

    async def slot_release(self, bucket: str, job_id: str) -> None:
        await self._run(lambda conn: conn.execute("DELETE FROM slots WHERE bucket = $1 AND job_id = $2",
                                                  bucket, job_id), transaction=False)

    # --- credits
    async def seed_account(self, account: str, initial: int) -> None:
        async def fn(conn) -> None:
            await advisory_lock(conn, LOCK_ACCOUNT, account)
            await conn.execute("INSERT INTO accounts (account, balance) VALUES ($1, $2) ON CONFLICT (account) "
                               "DO NOTHING", account, initial)

        await self._run(fn)

    async def grant(self, account: str, amount: int, initial: int = 0) -> int:
        async def fn(conn) -> tuple[int, bool]:
            await advisory_lock(conn, LOCK_ACCOUNT, account)
            _, seeded = await ensure_account(conn, account, initial)
            balance = await conn.fetchval("UPDATE accounts SET balance = balance + $2 WHERE account = $1 "
                                          "RETURNING balance", account, amount)
            return balance, seeded

        balance, seeded = await self._run(fn)
        if seeded:
            account_seeded(account, initial)
        return balance

    async def get_account(self, account: str, initial: int = 0) -> Account:
        row = await self._run(lambda conn: conn.fetchrow(
            "SELECT balance, held, spent FROM accounts WHERE account = $1", account), transaction=False)
        return Account(row[0], row[1], row[2]) if row else Account(initial)

    async def open_hold(self, job_id: str, account: str, want: int, expires_at: float, meta: dict,
                        minimum: int = 1, initial: int = 0) -> int:
        async def fn(conn) -> tuple[int, bool]:
            await advisory_lock(conn, LOCK_ACCOUNT, account)
            return await open_hold_in(conn, job_id, account, want, expires_at, meta, minimum, initial)

        granted, seeded = await self._run(fn)
        if seeded:
            account_seeded(account, initial)
        return granted

    async def grow_hold(self, job_id: str, account: str, want: int, expires_at: float,
                        reopen: dict | None = None, initial: int = 0) -> int:
        async def fn(conn) -> tuple[int, bool]:
            await advisory_lock(conn, LOCK_ACCOUNT, account)
            if await conn.fetchval("SELECT 1 FROM holds WHERE job_id = $1", job_id) is None:
                if reopen is None:
                    return 0, False
                return await open_hold_in(conn, job_id, account, want, expires_at, reopen, 1, initial)  # lost: again
            available, seeded = await ensure_account(conn, account, initial)
            granted = max(0, min(want, available))
            await conn.execute(
                "WITH h AS (UPDATE holds SET amount = amount + $3, expires_at = $4 WHERE job_id = $1) "
                "UPDATE accounts SET held = held + $3 WHERE account = $2", job_id, account, granted, expires_at)
            return granted, seeded

        granted, seeded = await self._run(fn)
        if seeded:
            account_seeded(account, initial)
        return granted

    async def checkpoint(self, progress: Sequence[Progress]) -> None:
        if not progress:
            return
        # one statement for the batch: a job given twice keeps its last count; a hold settled
        # meanwhile is not found; a hold row another transaction has locked (a settle, a growth) is
        # skipped rather than waited for (the run's next checkpoint, or its settlement, follows)
        await self._run(lambda conn: conn.execute(
            "WITH p AS (SELECT DISTINCT ON (job_id) * FROM unnest($1::text[], $2::bigint[], $3::bigint[], "
            "$4::bigint[], $5::double precision[]) WITH ORDINALITY "
            "AS p(job_id, metered, input_tokens, output_tokens, expires_at, n) ORDER BY job_id, n DESC), "
            "free AS (SELECT holds.job_id FROM holds JOIN p USING (job_id) ORDER BY holds.job_id "
            "FOR UPDATE OF holds SKIP LOCKED) "
            "UPDATE holds SET metered = p.metered, input_tokens = p.input_tokens, output_tokens = p.output_tokens, "
            "expires_at = p.expires_at FROM p JOIN free USING (job_id) WHERE holds.job_id = p.job_id",
            [p.job_id for p in progress], [p.metered for p in progress], [p.input_tokens for p in progress],
            [p.output_tokens for p in progress], [p.expires_at for p in progress]), transaction=False)

    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None:
        now = time.time() if now is None else now
        sample = usage_sample(entry)

        async def fn(conn) -> tuple[dict | None, bool]:
            await advisory_lock(conn, LOCK_ACCOUNT, account)
            # a job has a hold or a ledger entry, never both: taking the hold proves it unsettled
            row = await conn.fetchrow(f"DELETE FROM holds WHERE job_id = $1 RETURNING {HOLD_COLUMNS}", job_id)
            if row is None and await conn.fetchval("SELECT 1 FROM ledger WHERE job_id = $1", job_id):
                return None, False
            hold = hold_of(row) if row is not None else None
            amount = charge if charge is not None else (hold.metered if hold else 0)
            _, seeded = await ensure_account(conn, account, initial)
            await conn.execute("UPDATE accounts SET held = greatest(0, held - $2), balance = balance - $3, "
                               "spent = spent + $3 WHERE account = $1", account, hold.amount if hold else 0, amount)
            result = ledger_entry(hold, job_id, account, amount, entry, now)
            outcome, flow = result.get("outcome"), result.get("flow")
            await conn.execute(
                "INSERT INTO ledger (job_id, account, credits, outcome, flow, ended_at, entry) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7)", job_id, account, amount,
                outcome if isinstance(outcome, str) else None, flow if isinstance(flow, str) else None,
                float(result["ended_at"]), json_text(result))
            if sample is not None:  # a completed run: its flow's recent usage keeps the last USAGE_KEEP
                await conn.execute(
                    "WITH ins AS (INSERT INTO usage (account, flow, output_tokens) VALUES ($1, $2, $3)) "
                    "DELETE FROM usage WHERE account = $1 AND flow = $2 AND seq <= (SELECT seq FROM usage "
                    "WHERE account = $1 AND flow = $2 ORDER BY seq DESC LIMIT 1 OFFSET $4)",
                    account, sample[0], sample[1], USAGE_KEEP - 1)
            return result, seeded

        result, seeded = await self._run(fn)
        if seeded:
            account_seeded(account, initial)
        return result

    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]:
        rows = await self._run(lambda conn: conn.fetch(
            "SELECT output_tokens FROM usage WHERE account = $1 AND flow = $2 ORDER BY seq DESC LIMIT $3",
            account, flow, min(limit, USAGE_KEEP)), transaction=False)
        return usage_values(r[0] for r in rows)

    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]:
        now = time.time() if now is None else now
        rows = await self._run(lambda conn: conn.fetch(
            f"SELECT {HOLD_COLUMNS} FROM holds WHERE account = ANY($1::text[]) AND expires_at < $2 "
            "ORDER BY expires_at LIMIT $3", list(accounts), now, limit), transaction=False)
        return [hold_of(r) for r in rows]

    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]:
        rows = await self._run(lambda conn: conn.fetch(
            "SELECT entry FROM ledger WHERE account = $1 AND ended_at >= $2 ORDER BY ended_at, seq LIMIT $3",
            account, float("-inf") if since is None else since, limit), transaction=False)
        return [orjson.loads(r[0]) for r in rows]

    async def ledger_entry(self, account: str, job_id: str) -> dict | None:
        raw = await self._run(lambda conn: conn.fetchval(
            "SELECT entry FROM ledger WHERE job_id = $1 AND account = $2", job_id, account), transaction=False)
        return orjson.loads(raw) if raw else None

    # --- keys made through the admin API (the version moves in the same transaction as the change)
    @staticmethod
    async def _bump(conn) -> None:
        await conn.execute("INSERT INTO counters (name, value) VALUES ('keys', 1) "
                           "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1")

    async def put_key(self, record: dict) -> str:
        record = key_record(record)

        async def fn(conn) -> str:
            await advisory_lock(conn, LOCK_KEYS, "keys")  # the id and hash checks and the insert, one at a time
            if await conn.fetchval("SELECT 1 FROM api_keys WHERE id = $1", record["id"]):
                return "id_taken"
            if await conn.fetchval("SELECT 1 FROM api_keys WHERE sha256 = $1", record["sha256"]):
                return "hash_taken"
            await conn.execute("INSERT INTO api_keys (id, sha256, record) VALUES ($1, $2, $3)",
                               record["id"], record["sha256"], json_text(record))
            await self._bump(conn)
            return "ok"

        return await self._run(fn)

    async def delete_key(self, key_id: str) -> bool:
        async def fn(conn) -> bool:
            if await conn.fetchval("DELETE FROM api_keys WHERE id = $1 RETURNING 1", key_id) is None:
                return False
            await self._bump(conn)
            return True

        return await self._run(fn)

    async def list_keys(self) -> list[dict]:
        rows = await self._run(lambda conn: conn.fetch("SELECT record FROM api_keys ORDER BY seq"), transaction=False)
        return [orjson.loads(r[0]) for r in rows]

    async def keys_version(self) -> int:
        value = await self._run(lambda conn: conn.fetchval("SELECT value FROM counters WHERE name = 'keys'"),
                                transaction=False)
        return int(value) if value is not None else 0
