"""What every store implements and shares: the :class:`Store` protocol, its value types, and the
helpers every implementation uses the same way (:mod:`proxy.store` says the semantics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from ..run import MAX_TOKENS


@dataclass(slots=True, frozen=True)
class RateResult:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: float


@dataclass(slots=True, frozen=True)
class Account:
    balance: int = 0
    held: int = 0
    spent: int = 0


@dataclass(slots=True)
class Hold:
    job_id: str
    account: str
    amount: int
    metered: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    expires_at: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Progress:
    """A running job's metering so far, as a checkpoint records it on its hold."""

    job_id: str
    account: str
    metered: int
    input_tokens: int
    output_tokens: int
    expires_at: float


class Store(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def put_token(self, token_hash: str, record: dict, expires_at: float) -> None: ...
    async def consume_token(self, token_hash: str, now: float | None = None) -> tuple[str, dict | None]: ...

    async def rate_hit(self, bucket: str, limit: int, window_s: int, now: float | None = None) -> RateResult: ...
    async def slot_acquire(self, bucket: str, limit: int, job_id: str, expires_at: float,
                           now: float | None = None) -> RateResult: ...
    async def slot_release(self, bucket: str, job_id: str) -> None: ...

    async def seed_account(self, account: str, initial: int) -> None: ...
    async def grant(self, account: str, amount: int, initial: int = 0) -> int: ...
    async def get_account(self, account: str, initial: int = 0) -> Account: ...
    async def open_hold(self, job_id: str, account: str, want: int, expires_at: float, meta: dict,
                        minimum: int = 1, initial: int = 0) -> int: ...
    async def grow_hold(self, job_id: str, account: str, want: int, expires_at: float,
                        reopen: dict | None = None, initial: int = 0) -> int: ...
    async def checkpoint(self, progress: Sequence[Progress]) -> None: ...
    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None: ...
    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]: ...
    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]: ...
    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]: ...

    async def ledger_entry(self, account: str, job_id: str) -> dict | None: ...

    async def put_key(self, record: dict) -> str: ...
    async def delete_key(self, key_id: str) -> bool: ...
    async def list_keys(self) -> list[dict]: ...
    async def keys_version(self) -> int: ...


USAGE_KEEP = 100  # recent completed runs kept per flow (``limits.credit_hold_window_runs`` is at most this)

log = structlog.get_logger("flowgate.store")


def account_seeded(account: str, initial: int) -> None:
    """The one warning a lazily re-created account logs (the store had lost it, or never had it)."""
    log.warning("account_seeded", account=account, initial_credits=initial,
                detail="the store had no record of this account: created from initial_credits, as a restart would")


MAX_SAMPLE = MAX_TOKENS  # what every store holds exactly (SQLite's integers, Lua's numbers)


def usage_sample(entry: dict) -> tuple[str, int] | None:
    """(flow, output tokens) of a settlement that feeds its flow's recent usage: completed runs only
    (a cut, a disconnect or a lost replica says nothing about what a run needs)."""
    flow, tokens = entry.get("flow"), entry.get("output_tokens")
    if entry.get("outcome") == "completed" and isinstance(flow, str) and isinstance(tokens, int) and tokens >= 0:
        return flow, min(tokens, MAX_SAMPLE)
    return None


def usage_values(raw) -> list[int]:
    """Recent-usage values as read back: whole numbers only (anything else in the store is skipped)."""
    out = []
    for value in raw:
        try:
            number = int(value)
        except (TypeError, ValueError):
            continue
        if 0 <= number <= MAX_SAMPLE:
            out.append(number)
    return out


KEY_FIELDS = ("id", "sha256", "owner", "policies", "tenant", "workspace", "envs", "rate_limit", "created_at",
              "expires_at")


def key_record(record: dict) -> dict:
    """A key record as every store keeps it: the known fields only (a JSON object; ``id`` and
    ``sha256`` are strings)."""
    out = {name: record.get(name) for name in KEY_FIELDS}
    if not isinstance(out["id"], str) or not isinstance(out["sha256"], str):
        raise ValueError("a key record needs a string id and sha256")
    return out


def instant(raw: str) -> float | None:
    """A ledger bound as given by an operator (the admin API's ``since``/``until``, ``flowgate
    ledger --since``): epoch seconds or an ISO 8601 date/time (UTC when no zone is given); None
    for anything else, NaN and the infinities included (no instant; Redis refuses a NaN bound)."""
    try:
        value = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw)
            value = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError):
            return None
    return value if math.isfinite(value) else None


def ledger_entry(hold: Hold | None, job_id: str, account: str, charge: int, entry: dict, now: float) -> dict:
    """The one ledger entry a settlement writes (all implementations build it the same way)."""
    base: dict[str, Any] = {}
    if hold is not None:
        base.update(hold.meta)
        base["input_tokens"] = hold.input_tokens
        base["output_tokens"] = hold.output_tokens
    base.update(entry)
    base["job_id"] = job_id
    base["owner"] = account
    base["credits"] = charge
    base.setdefault("ended_at", now)
    return base
