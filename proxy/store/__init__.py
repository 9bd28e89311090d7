"""The state store: every piece of mutable state behind one small async protocol.

Five implementations, chosen by the ``store:`` URL, pass one contract suite
(``tests/store/test_contract.py``): ``memory://`` (tests; a real implementation), ``sqlite:///path``
(embedded default: WAL, several processes may share the file), ``redis://host:port/db`` (replicas
share it; every check-and-change is one Lua script; keys carry hash tags),
``redis+cluster://host:port[,host:port...]`` (the same scripts on a Redis Cluster: each script's
keys in one slot) and ``postgresql://user:password@host:port/db`` (replicas share it; every
check-and-change is one statement or one transaction; the ledger a plain SQL table).

Adding another: implement :class:`Store` so that every method marked ATOMIC is a single
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
- Keys made through the admin API (a record per key: :func:`~.base.key_record`'s fields, the
  secret's SHA-256, never the secret). ``put_key`` (ATOMIC) adds one and answers ``"ok"``, or
  ``"id_taken"`` / ``"hash_taken"`` and changes nothing; ``delete_key`` (ATOMIC) removes one by id
  (False when there is none); ``list_keys`` answers every record, oldest first. ``keys_version``
  is a counter that every ``put_key`` and ``delete_key`` that changed something increases in the
  same atomic step (starts at 0): a process that read the version and then the records knows it
  has them all as long as the version has not moved. Expiry is the reader's business
  (``expires_at``, epoch seconds or None); an expired key stays listed until it is deleted.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlparse

import structlog

from .. import metrics as m
from ..errors import StoreUnavailable
from .base import USAGE_KEEP, Account, Hold, Progress, RateResult, Store
from .urls import check_store_url

__all__ = ["USAGE_KEEP", "Account", "Hold", "Progress", "RateResult", "Store", "Instrumented", "check_store_url",
           "open_store"]

log = structlog.get_logger("flowgate.store")


class Instrumented:
    """Wraps a store: every call is timed into ``flowgate_store_operation_seconds`` and failures
    counted into ``flowgate_store_errors_total``, labelled by operation name (a bounded set).

    The moment the store stops answering is logged once (``store_unreachable``, warning, with the
    operation and the error's class), and the moment it answers again (``store_reachable``)."""

    _OPS = frozenset(name for name in Store.__dict__ if not name.startswith("_"))

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.reachable = True
        for name in self._OPS:
            setattr(self, name, self._wrap(name, getattr(inner, name)))

    def _wrap(self, name: str, fn):
        seconds = m.STORE_SECONDS.labels(name)
        errors = m.STORE_ERRORS.labels(name)

        async def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except StoreUnavailable as exc:
                errors.inc()
                if self.reachable:
                    self.reachable = False
                    log.warning("store_unreachable", operation=name, error=exc.detail,
                                detail="runs and store keys fail closed (503) until it answers again")
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
            if not self.reachable:
                self.reachable = True
                log.info("store_reachable", operation=name)
            return result

        call.__name__ = name
        return call


def open_store(url: str, *, instrument: bool = True) -> Store:
    """The store for a ``store:`` URL (not started: call ``await store.start()``)."""
    scheme = check_store_url(url)
    prefix = parse_qs(urlparse(url).query).get("prefix", ["fg"])[0]
    if scheme == "memory":
        from .memory import MemoryStore

        store: Store = MemoryStore()
    elif scheme == "sqlite":
        from .sqlite import SqliteStore

        store = SqliteStore(url[len("sqlite:///"):])
    elif scheme in ("redis+cluster", "rediss+cluster"):
        from .redis_cluster import RedisClusterStore

        store = RedisClusterStore(url.split("?", 1)[0], prefix=prefix)
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresStore

        store = PostgresStore(url)
    else:
        from .redis import RedisStore

        store = RedisStore(url.split("?", 1)[0], prefix=prefix)
    return Instrumented(store) if instrument else store  # type: ignore[return-value]
