"""The SQL the PostgreSQL store's operations share: advisory locks, an account made on first use, a
hold opened (each inside the caller's transaction, under its account lock)."""

from __future__ import annotations

import orjson

from .base import Hold

LOCK_ACCOUNT, LOCK_SLOTS, LOCK_WINDOW, LOCK_KEYS = 1, 2, 3, 4  # pg_advisory_xact_lock(namespace, hashtext(name))

HOLD_COLUMNS = "job_id, account, amount, metered, input_tokens, output_tokens, expires_at, meta"


def json_text(value) -> str:
    return orjson.dumps(value).decode()


def hold_of(row) -> Hold:
    return Hold(row[0], row[1], row[2], row[3], row[4], row[5], row[6], orjson.loads(row[7]))


async def advisory_lock(conn, namespace: int, name: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", namespace, name)


async def ensure_account(conn, account: str, initial: int) -> tuple[int, bool]:
    """(available credits, created now): a missing account is created with ``initial`` (under the
    caller's account lock, so no other transaction creates it between this INSERT and its SELECT)."""
    row = await conn.fetchrow(
        "WITH ins AS (INSERT INTO accounts (account, balance) VALUES ($1, $2) ON CONFLICT (account) DO NOTHING "
        "RETURNING balance - held AS available) "
        "SELECT available, true FROM ins UNION ALL SELECT balance - held, false FROM accounts WHERE account = $1",
        account, initial)
    return row[0], row[1]


async def open_hold_in(conn, job_id: str, account: str, want: int, expires_at: float, meta: dict, minimum: int,
                       initial: int) -> tuple[int, bool]:
    """The hold created with what the account has free (if at least ``minimum``), unless the job
    already has one (an idempotent retry) or was settled; under the caller's account lock."""
    row = await conn.fetchrow("SELECT (SELECT amount FROM holds WHERE job_id = $1), "
                              "EXISTS (SELECT 1 FROM ledger WHERE job_id = $1)", job_id)
    if row[0] is not None:
        return row[0], False
    if row[1]:
        return 0, False
    available, seeded = await ensure_account(conn, account, initial)
    if available <= 0 or available < minimum:
        return 0, seeded
    granted = min(want, available)
    await conn.execute(
        "WITH h AS (INSERT INTO holds (job_id, account, amount, expires_at, meta) VALUES ($1, $2, $3, $4, $5)) "
        "UPDATE accounts SET held = held + $3 WHERE account = $2",
        job_id, account, granted, expires_at, json_text(meta))
    return granted, seeded
