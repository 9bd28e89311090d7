"""Embedded store on one SQLite file: WAL, survives restarts, safe for several processes.

The schema and the operations; how they reach the file (inline on the loop or on the store
thread, group-committed, checkpointed) is :mod:`proxy.store.sqlite_db`. Each operation is one
``fn(connection)`` run inside a transaction, so every check-and-change is atomic across processes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import orjson

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
from .sqlite_db import LoopDatabase

# WITHOUT ROWID: each table is stored in its primary key's B-tree, so a write dirties one page
# fewer (no separate key index) and a commit writes that much less WAL.
SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, record BLOB NOT NULL, expires_at REAL NOT NULL,
                                   used INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
-- the purge deletes by expiry: without this it read the whole table (an hour of tokens) on the loop
CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS windows (bucket TEXT PRIMARY KEY, start REAL NOT NULL, count INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slots (bucket TEXT NOT NULL, job_id TEXT NOT NULL, expires_at REAL NOT NULL,
                                  PRIMARY KEY (bucket, job_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (account TEXT PRIMARY KEY, balance INTEGER NOT NULL,
                                     held INTEGER NOT NULL DEFAULT 0, spent INTEGER NOT NULL DEFAULT 0)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (job_id TEXT PRIMARY KEY, account TEXT NOT NULL, amount INTEGER NOT NULL,
                                  metered INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,
                                  output_tokens INTEGER NOT NULL DEFAULT 0, expires_at REAL NOT NULL,
                                  meta BLOB NOT NULL) WITHOUT ROWID;
-- no index on holds' expiry: the table holds only open runs (a scan by the stale-hold sweeper, a few
-- times a minute, reads them all in ~1 ms per 10,000), and its upkeep cost two B-tree writes per run
DROP INDEX IF EXISTS holds_expiry;
CREATE TABLE IF NOT EXISTS ledger (job_id TEXT PRIMARY KEY, account TEXT NOT NULL, ended_at REAL NOT NULL,
                                   entry BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ledger_account ON ledger (account, ended_at);
CREATE TABLE IF NOT EXISTS usage (account TEXT NOT NULL, flow TEXT NOT NULL, ended_at REAL NOT NULL,
                                  job_id TEXT NOT NULL, output_tokens INTEGER NOT NULL,
                                  PRIMARY KEY (account, flow, ended_at, job_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, seq INTEGER NOT NULL,
                                     record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""

PURGE_EVERY = 1000


class SqliteStore:
    def __init__(self, path: str, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.db = LoopDatabase(path, busy_timeout_ms, SCHEMA)
        self._call = self.db.call
        self._write = self.db.write
        self._writes = 0
        self._usage_written: set[tuple[str, str]] = set()  # (account, flow) given usage since the last purge

    async def start(self) -> None:
        await self.db.start()

    async def close(self) -> None:
        await self.db.close()

    async def ping(self) -> None:
        await self._call(lambda db: db.execute("SELECT 1").fetchone())

    def _maybe_purge(self, db: sqlite3.Connection, now: float) -> None:
        """Every PURGE_EVERY writes: tokens an hour past their expiry (they answer "expired" until
        then), rate windows a day old, and recent usage beyond each flow's last USAGE_KEEP runs for
        the flows this process gave usage to since (each an index range: no statement reads a table)."""
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            db.execute("DELETE FROM tokens WHERE expires_at < ?", (now - 3600,))
            db.execute("DELETE FROM windows WHERE start < ?", (now - 86400,))
            written, self._usage_written = self._usage_written, set()
            for account, flow in written:
                db.execute("DELETE FROM usage WHERE account = ?1 AND flow = ?2 AND ended_at < (SELECT ended_at "
                           "FROM usage WHERE account = ?1 AND flow = ?2 ORDER BY ended_at DESC LIMIT 1 OFFSET ?3)",
                           (account, flow, USAGE_KEEP - 1))

    # --- tokens
    async def put_token(self, token_hash: str, record: dict, expires_at: float) -> None:
        data = orjson.dumps(record)

        def fn(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO tokens (hash, record, expires_at, used) VALUES (?, ?, ?, 0)",
                       (token_hash, data, expires_at))
            self._maybe_purge(db, time.time())

        await self._write(fn)

    async def consume_token(self, token_hash: str, now: float | None = None) -> tuple[str, dict | None]:
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> tuple[str, dict | None]:
            # one statement: mark used only if unused and unexpired, and say what it found
            row = db.execute("UPDATE tokens SET used = 1 WHERE hash = ? AND used = 0 AND expires_at > ? "
                             "RETURNING record", (token_hash, now)).fetchone()
            if row is not None:
                return "ok", orjson.loads(row[0])
            row = db.execute("SELECT used, expires_at FROM tokens WHERE hash = ?", (token_hash,)).fetchone()
            if row is None:
                return "unknown", None
            return ("expired" if row[1] <= now else "used"), None

        return await self._write(fn)

    # --- rate limits
    async def rate_hit(self, bucket: str, limit: int, window_s: int, now: float | None = None) -> RateResult:
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> RateResult:
            row = db.execute("SELECT start, count FROM windows WHERE bucket = ?", (bucket,)).fetchone()
            start, count = row if row is not None else (now, 0)
            if now >= start + window_s:
                start, count = now, 0
            retry = start + window_s - now
            if count >= limit:
                return RateResult(False, limit, 0, retry)
            db.execute("INSERT OR REPLACE INTO windows (bucket, start, count) VALUES (?, ?, ?)",
                       (bucket, start, count + 1))
            return RateResult(True, limit, limit - count - 1, retry)

        return await self._write(fn)

    async def slot_acquire(self, bucket: str, limit: int, job_id: str, expires_at: float,
                           now: float | None = None) -> RateResult:
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> RateResult:
            db.execute("DELETE FROM slots WHERE bucket = ? AND expires_at <= ?", (bucket, now))
            rows = db.execute("SELECT job_id, expires_at FROM slots WHERE bucket = ?", (bucket,)).fetchall()
            held = {j for j, _ in rows}
            if job_id not in held and len(held) >= limit:
                return RateResult(False, limit, 0, max(0.0, min(e for _, e in rows) - now))
            db.execute("INSERT OR REPLACE INTO slots (bucket, job_id, expires_at) VALUES (?, ?, ?)",
                       (bucket, job_id, expires_at))
            return RateResult(True, limit, limit - len(held | {job_id}), 0.0)

        return await self._write(fn)

    async def slot_release(self, bucket: str, job_id: str) -> None:
        await self._write(lambda db: db.execute("DELETE FROM slots WHERE bucket = ? AND job_id = ?",
                                                         (bucket, job_id)))

    # --- credits
    async def seed_account(self, account: str, initial: int) -> None:
        await self._write(lambda db: db.execute(
            "INSERT OR IGNORE INTO accounts (account, balance) VALUES (?, ?)", (account, initial)))

    @staticmethod
    def _ensure_account(db: sqlite3.Connection, account: str, initial: int) -> bool:
        """Create a missing account with ``initial`` (in the caller's transaction); True if it did."""
        return db.execute("INSERT OR IGNORE INTO accounts (account, balance) VALUES (?, ?)",
                          (account, initial)).rowcount == 1

    async def grant(self, account: str, amount: int, initial: int = 0) -> int:
        def fn(db: sqlite3.Connection) -> tuple[int, bool]:
            seeded = self._ensure_account(db, account, initial)
            return db.execute("UPDATE accounts SET balance = balance + ? WHERE account = ? RETURNING balance",
                              (amount, account)).fetchone()[0], seeded

        balance, seeded = await self._write(fn)
        if seeded:
            account_seeded(account, initial)
        return balance

    async def get_account(self, account: str, initial: int = 0) -> Account:
        row = await self._call(lambda db: db.execute(
            "SELECT balance, held, spent FROM accounts WHERE account = ?", (account,)).fetchone())
        return Account(*row) if row else Account(initial)

    def _opener(self, job_id: str, account: str, want: int, expires_at: float, meta: dict, minimum: int,
                initial: int):
        """``fn(db) -> (granted, seeded)``: the hold created with what the account has free (if at
        least ``minimum``), unless the job already has a hold (an idempotent retry) or a ledger entry
        (settled): two statements on the common path.

        A loop, not a call of ``fn`` from within itself: a closure that names itself is a reference
        cycle, which only the cyclic GC frees (every run's hold left 13 such objects to it)."""
        data = orjson.dumps(meta)
        params = (job_id, account, want, expires_at, data, account, minimum, job_id)

        def fn(db: sqlite3.Connection) -> tuple[int, bool]:
            seeded = False
            while True:
                row = db.execute(
                    "INSERT INTO holds (job_id, account, amount, expires_at, meta) "
                    "SELECT ?, ?, min(?, balance - held), ?, ? FROM accounts WHERE account = ? "
                    "AND balance - held >= max(?, 1) AND NOT EXISTS (SELECT 1 FROM ledger WHERE job_id = ?) "
                    "ON CONFLICT (job_id) DO NOTHING RETURNING amount", params).fetchone()
                if row is not None:
                    db.execute("UPDATE accounts SET held = held + ? WHERE account = ?", (row[0], account))
                    return row[0], seeded
                existing = db.execute("SELECT amount FROM holds WHERE job_id = ?", (job_id,)).fetchone()
                if existing is not None:
                    return existing[0], seeded
                if seeded or not self._ensure_account(db, account, initial):
                    return 0, seeded
                seeded = True  # the account was missing: created, so the hold now decides

        return fn

    async def open_hold(self, job_id: str, account: str, want: int, expires_at: float, meta: dict,
                        minimum: int = 1, initial: int = 0) -> int:
        granted, seeded = await self._write(self._opener(job_id, account, want, expires_at, meta, minimum, initial))
        if seeded:
            account_seeded(account, initial)
        return granted

    async def grow_hold(self, job_id: str, account: str, want: int, expires_at: float,
                        reopen: dict | None = None, initial: int = 0) -> int:
        reopener = None if reopen is None else self._opener(job_id, account, want, expires_at, reopen, 1, initial)

        def fn(db: sqlite3.Connection) -> tuple[int, bool]:
            if db.execute("SELECT 1 FROM holds WHERE job_id = ?", (job_id,)).fetchone() is None:
                return (0, False) if reopener is None else reopener(db)  # lost with the store's data
            seeded = self._ensure_account(db, account, initial)
            row = db.execute("SELECT balance - held FROM accounts WHERE account = ?", (account,)).fetchone()
            granted = max(0, min(want, row[0]))
            db.execute("UPDATE accounts SET held = held + ? WHERE account = ?", (granted, account))
            db.execute("UPDATE holds SET amount = amount + ?, expires_at = ? WHERE job_id = ?",
                       (granted, expires_at, job_id))
            return granted, seeded

        granted, seeded = await self._write(fn)
        if seeded:
            account_seeded(account, initial)
        return granted

    async def checkpoint(self, progress: Sequence[Progress]) -> None:
        rows = [(p.metered, p.input_tokens, p.output_tokens, p.expires_at, p.job_id) for p in progress]
        if rows:
            await self._write(lambda db: db.executemany(
                "UPDATE holds SET metered = ?, input_tokens = ?, output_tokens = ?, expires_at = ? WHERE job_id = ?",
                rows))

    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None:
        now = time.time() if now is None else now
        sample = usage_sample(entry)
        seeded = False

        def fn(db: sqlite3.Connection) -> dict | None:
            nonlocal seeded
            # a job has a hold or a ledger entry, never both: taking the hold proves it unsettled
            row = db.execute(
                "DELETE FROM holds WHERE job_id = ? RETURNING job_id, account, amount, metered, input_tokens, "
                "output_tokens, expires_at, meta", (job_id,)).fetchone()
            if row is None and db.execute("SELECT 1 FROM ledger WHERE job_id = ?", (job_id,)).fetchone():
                return None
            hold = Hold(*row[:7], meta=orjson.loads(row[7])) if row is not None else None
            amount = charge if charge is not None else (hold.metered if hold else 0)
            released = hold.amount if hold else 0
            change = ("UPDATE accounts SET held = max(0, held - ?), balance = balance - ?, spent = spent + ? "
                      "WHERE account = ?", (released, amount, amount, account))
            if db.execute(*change).rowcount == 0:  # the account was lost: made again, then charged
                seeded = self._ensure_account(db, account, initial)
                db.execute(*change)
            result = ledger_entry(hold, job_id, account, amount, entry, now)
            db.execute("INSERT INTO ledger (job_id, account, ended_at, entry) VALUES (?, ?, ?, ?)",
                       (job_id, account, result["ended_at"], orjson.dumps(result)))
            if sample is not None:
                self._usage_written.add((account, sample[0]))
                db.execute("INSERT OR REPLACE INTO usage (account, flow, ended_at, job_id, output_tokens) "
                           "VALUES (?, ?, ?, ?, ?)", (account, sample[0], result["ended_at"], job_id, sample[1]))
            self._maybe_purge(db, now)  # (settlements count too: a deployment without tokens purges as well)
            return result

        result = await self._write(fn)
        if seeded:
            account_seeded(account, initial)
        return result

    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]:
        rows = await self._call(lambda db: db.execute(
            "SELECT output_tokens FROM usage WHERE account = ? AND flow = ? ORDER BY ended_at DESC LIMIT ?",
            (account, flow, min(limit, USAGE_KEEP))).fetchall())
        return usage_values(r[0] for r in rows)

    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]:
        now = time.time() if now is None else now
        wanted = orjson.dumps(list(accounts))

        def fn(db: sqlite3.Connection) -> list[Hold]:
            # the accounts filtered before the limit: another account's expired holds never hide these
            rows = db.execute(
                "SELECT job_id, account, amount, metered, input_tokens, output_tokens, expires_at, meta "
                "FROM holds WHERE expires_at < ? AND account IN (SELECT value FROM json_each(?)) "
                "ORDER BY expires_at LIMIT ?", (now, wanted, limit)).fetchall()
            return [Hold(*r[:7], meta=orjson.loads(r[7])) for r in rows]

        return await self._call(fn)

    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]:
        def fn(db: sqlite3.Connection) -> list[dict]:
            rows = db.execute(
                "SELECT entry FROM ledger WHERE account = ? AND ended_at >= ? ORDER BY ended_at LIMIT ?",
                (account, since if since is not None else float("-inf"), limit if limit is not None else -1),
            ).fetchall()
            return [orjson.loads(r[0]) for r in rows]

        return await self._call(fn)

    async def ledger_entry(self, account: str, job_id: str) -> dict | None:
        row = await self._call(lambda db: db.execute(
            "SELECT entry FROM ledger WHERE job_id = ? AND account = ?", (job_id, account)).fetchone())
        return orjson.loads(row[0]) if row else None

    # --- keys made through the admin API (the version moves in the same transaction as the change)
    @staticmethod
    def _bump(db: sqlite3.Connection) -> int:
        return db.execute("INSERT INTO counters (name, value) VALUES ('keys', 1) ON CONFLICT (name) DO UPDATE "
                          "SET value = value + 1 RETURNING value").fetchone()[0]

    async def put_key(self, record: dict) -> str:
        record = key_record(record)
        data = orjson.dumps(record)

        def fn(db: sqlite3.Connection) -> str:
            if db.execute("SELECT 1 FROM api_keys WHERE id = ?", (record["id"],)).fetchone():
                return "id_taken"
            if db.execute("SELECT 1 FROM api_keys WHERE sha256 = ?", (record["sha256"],)).fetchone():
                return "hash_taken"
            seq = self._bump(db)
            db.execute("INSERT INTO api_keys (id, sha256, seq, record) VALUES (?, ?, ?, ?)",
                       (record["id"], record["sha256"], seq, data))
            return "ok"

        return await self._write(fn)

    async def delete_key(self, key_id: str) -> bool:
        def fn(db: sqlite3.Connection) -> bool:
            if db.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount == 0:
                return False
            self._bump(db)
            return True

        return await self._write(fn)

    async def list_keys(self) -> list[dict]:
        rows = await self._call(lambda db: db.execute("SELECT record FROM api_keys ORDER BY seq").fetchall())
        return [orjson.loads(r[0]) for r in rows]

    async def keys_version(self) -> int:
        row = await self._call(lambda db: db.execute("SELECT value FROM counters WHERE name = 'keys'").fetchone())
        return int(row[0]) if row else 0
