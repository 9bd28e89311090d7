"""The state store: every piece of mutable state behind one small async protocol.

Three implementations, chosen by the ``store:`` URL, pass one contract suite
(``tests/store/test_contract.py``): ``memory://`` (tests; a real implementation), ``sqlite:///path``
(embedded default: WAL, several processes may share the file) and ``redis://host:port/db``
(replicas share it; every check-and-change is one Lua script; keys carry hash tags).

Adding a fourth: implement :class:`Store` so that every method marked ATOMIC is a single
check-and-change for all processes sharing the backend, raise
:class:`~proxy.errors.StoreUnavailable` (never a raw driver error) when the backend cannot be
reached, add the URL scheme to :func:`open_store`, and add it to the contract suite's fixture.

Semantics, shared by all implementations:

- Tokens are stored by hash with a record (owner, key_id, flow_id) and an expiry.
  ``consume_token`` (ATOMIC) answers ``("ok", record)`` once, then ``"used"``; ``"expired"`` after
  the expiry (or ``"unknown"`` once the backend dropped it).
- ``rate_hit`` (ATOMIC): a window of ``window_s`` that starts at the bucket's first hit; a hit is
  counted only when allowed. ``slot_acquire``/``slot_release``: concurrency slots that expire.
- Credits (all ints): an account has ``balance`` (may go negative), ``held`` (sum of open holds)
  and ``spent``; available = balance - held. ``open_hold``/``grow_hold`` (ATOMIC) never hold more
  than is available; ``open_hold`` grants ``min(want, available)``, or nothing when available is
  below ``minimum``; ``grow_hold`` of a hold the store lost (never of a settled job) opens it
  again as ``open_hold`` would when given the hold's ``reopen`` metadata, else grants nothing.
  Releasing a hold never takes ``held`` below 0 (an account re-created while its holds survived
  does not count them). ``settle`` (ATOMIC, idempotent by job id) charges, releases the hold and
  appends one ledger entry; the entry doubles as the job record (``ledger_entry``). A settled run
  that ``completed`` on a flow adds its output tokens to that flow's recent usage
  (``recent_usage``, newest first, the last ``USAGE_KEEP`` runs), which sizes first holds.
- Nothing depends on start-up seeding: every operation that creates an account (``open_hold``,
  ``grant``, ``settle``) creates a missing one with ``initial`` (what ``seed_account`` would
  have given it: a store that lost its data behaves as after a restart) and logs one warning
  (:func:`account_seeded`); ``get_account`` reports a missing account as ``initial``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import structlog

from .. import metrics as m
from ..errors import StoreUnavailable
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
    async def checkpoint(self, job_id: str, account: str, metered: int, input_tokens: int, output_tokens: int,
                         expires_at: float) -> None: ...
    async def settle(self, job_id: str, account: str, charge: int | None, entry: dict,
                     now: float | None = None, initial: int = 0) -> dict | None: ...
    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]: ...
    async def expired_holds(self, accounts: list[str], now: float | None = None, limit: int = 100) -> list[Hold]: ...
    async def ledger(self, account: str, since: float | None = None, limit: int | None = None) -> list[dict]: ...

    async def ledger_entry(self, account: str, job_id: str) -> dict | None: ...


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


class Instrumented:
    """Wraps a store: every call is timed into ``flowgate_store_operation_seconds`` and failures
    counted into ``flowgate_store_errors_total``, labelled by operation name (a bounded set)."""

    _OPS = frozenset(name for name in Store.__dict__ if not name.startswith("_"))

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        for name in self._OPS:
            setattr(self, name, self._wrap(name, getattr(inner, name)))

    @staticmethod
    def _wrap(name: str, fn):
        seconds = m.STORE_SECONDS.labels(name)
        errors = m.STORE_ERRORS.labels(name)

        async def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except StoreUnavailable:
                errors.inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)

        call.__name__ = name
        return call


def open_store(url: str, *, instrument: bool = True) -> Store:
    """The store for a ``store:`` URL (not started: call ``await store.start()``)."""
    parsed = urlparse(url)
    if url.startswith("memory://"):
        from .memory import MemoryStore

        store: Store = MemoryStore()
    elif parsed.scheme == "sqlite":
        from .sqlite import SqliteStore

        path = url[len("sqlite:///"):]
        if not path:
            raise ValueError("sqlite store URL needs a path: sqlite:///relative.db or sqlite:////abs.db")
        store = SqliteStore(path)
    elif parsed.scheme in ("redis", "rediss"):
        from .redis import RedisStore

        prefix = parse_qs(parsed.query).get("prefix", ["fg"])[0]
        store = RedisStore(url.split("?", 1)[0], prefix=prefix)
    else:
        raise ValueError(f"unknown store URL {url!r}")
    return Instrumented(store) if instrument else store  # type: ignore[return-value]
