"""Every API key the gateway honours: the config file's, and those made through the admin API.

Config keys are looked up in the config's own index (no store, exactly as before). Keys made through
the admin API live in the store (their SHA-256, never the secret); each process keeps a copy of all
of them and the store's ``keys_version`` it was read at:

- a copy older than :data:`FRESH_S` is re-validated before it answers (one read of the version;
  the records are read again only when the version moved); the watcher (:func:`watch`) does this in the
  background every ``FRESH_S / 2``, so a request does not normally wait for the store;
- a secret the copy does not know is checked against the store's version at once (a key made on
  another replica a moment ago works at once); concurrent checks share one read, and the same
  unknown secret presented again is answered from memory while the copy is current;
- a revoked key is gone from every process within ``FRESH_S`` plus one store round trip (the
  contract: within a second); an expired key is refused by its ``expires_at`` without any store
  read at all.

When the store cannot be reached, a stale copy is not trusted: a store key's request fails closed
(503 ``store_unavailable``), config keys keep working. Why not a TTL cache per key: a per-key TTL
either reads the store on every request or honours a revocation late; one version counter costs one
small read per process every ``FRESH_S`` whatever the traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import Config, KeyConfig, KeyRateLimit
from ..env import Env
from ..errors import StoreUnavailable
from ..store import Store

FRESH_S = 0.5
MAX_MISSES = 10_000

log = structlog.get_logger("flowgate.keys")


@dataclass(slots=True, frozen=True)
class StoreKey:
    """A key made through the admin API, as this process knows it."""

    key: KeyConfig
    created_at: float | None
    expires_at: float | None

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


def store_key(record: dict) -> StoreKey | None:
    """The key of a store record, or None for a record this version cannot read (logged, skipped)."""
    fields = {name: record.get(name) for name in ("id", "sha256", "owner", "policies", "tenant", "workspace",
                                                   "envs", "rate_limit")}
    fields = {name: value for name, value in fields.items() if value is not None}
    try:
        key = KeyConfig.model_validate(fields)
        created, expires = record.get("created_at"), record.get("expires_at")
        return StoreKey(key, float(created) if created is not None else None,
                        float(expires) if expires is not None else None)
    except (ValueError, TypeError):
        log.warning("store_key_unreadable", key_id=str(record.get("id"))[:128])
        return None


class KeyRing:
    def __init__(self, config: Config, store: Store, fresh_s: float = FRESH_S) -> None:
        self.config = config
        self.store = store
        self.fresh_s = fresh_s
        self._by_hash: dict[str, StoreKey] = {}
        self._by_id: dict[str, StoreKey] = {}
        self._version = -1
        self._checked = float("-inf")  # monotonic time of the last successful version read
        self._sync: asyncio.Future | None = None
        self._sync_started = float("-inf")
        # what was not found at which version: the same unknown secret again, while this copy is
        # current, needs no store read (a new key has a new secret, never one presented before)
        self._misses: dict[tuple[str, str], int] = {}

    # --- lookups on the request path
    async def by_hash(self, digest: str) -> KeyConfig | None:
        """The live key whose secret has SHA-256 ``digest``, else None."""
        key = self.config.key_for_hash(digest)
        if key is not None:
            return key
        found = await self._lookup("hash", digest)
        return found.key if found is not None else None

    async def by_id(self, key_id: str) -> KeyConfig | None:
        """The live key with id ``key_id`` (a stream token's minting key), else None."""
        key = self.config.key_by_id(key_id)
        if key is not None:
            return key
        found = await self._lookup("id", key_id)
        return found.key if found is not None else None

    def _find(self, by: str, ref: str) -> StoreKey | None:
        return (self._by_id if by == "id" else self._by_hash).get(ref)

    async def _lookup(self, by: str, ref: str) -> StoreKey | None:
        asked = time.monotonic()
        synced = False
        if asked - self._checked > self.fresh_s:
            await self.sync(after=asked)
            synced = True
        found = self._find(by, ref)
        if found is None and not synced and self._misses.get((by, ref)) != self._version:
            await self.sync(after=asked)  # made elsewhere a moment ago?
            found = self._find(by, ref)
        if found is None:
            if len(self._misses) >= MAX_MISSES:
                self._misses.clear()
            self._misses[(by, ref)] = self._version
        return found if found is not None and found.live(time.time()) else None

    # --- what the admin API lists
    def stored(self) -> list[StoreKey]:
        return list(self._by_id.values())

    # --- keeping the copy current
    async def sync(self, after: float | None = None) -> None:
        """Read the store's version (and the records when it moved). Concurrent calls share one read
        (``after``: only one that started at or after this monotonic time); raises
        :class:`StoreUnavailable` when the store cannot be reached."""
        fut = self._sync
        if fut is not None and not fut.done() and after is not None and self._sync_started < after:
            with contextlib.suppress(Exception):
                await asyncio.shield(fut)  # began before we were asked: wait it out, then read again
            fut = self._sync
        if fut is None or fut.done() or (after is not None and self._sync_started < after):
            self._sync_started = time.monotonic()
            fut = self._sync = asyncio.ensure_future(self._read())
        await asyncio.shield(fut)

    async def _read(self) -> None:
        started = time.monotonic()
        version = await self.store.keys_version()
        if version != self._version:
            records = await self.store.list_keys()
            keys = [k for k in map(store_key, records) if k is not None]
            self._by_id = {k.key.id: k for k in keys}
            self._by_hash = {k.key.sha256: k for k in keys}
            self._version = version
        self._checked = started


async def watch(current: Callable[[], KeyRing]) -> None:
    """Re-validate the key ring in force (``current()``: a reload puts a new one in force) every
    ``fresh_s / 2`` until cancelled; a failure is retried, whatever it is (the watcher never dies)."""
    while True:
        ring = current()
        try:
            await ring.sync()
        except StoreUnavailable:
            pass  # requests for store keys fail closed meanwhile
        except Exception:
            log.exception("keys_sync_failed")
        await asyncio.sleep(ring.fresh_s / 2)


# --- making a key (the admin API's POST /admin/v1/keys and `flowgate keys create`)
MAX_EXPIRES_IN_S = 10 * 365 * 86400
NAME = r"^[A-Za-z0-9_.\-]{1,128}$"
PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # no CR-LF, no terminal escapes (a listing prints it), not empty


class KeySpec(BaseModel):
    """What a new key may be given; the secret and its id are made here (an id may be asked for)."""

    model_config = ConfigDict(extra="forbid")

    owner: str = Field(pattern=NAME, description="The account the key runs flows of (an account in the config).")
    policies: list[Literal["Execute", "Admin"]] = Field(
        default_factory=lambda: ["Execute"], min_length=1, description="Execute runs flows; Admin uses /admin/v1.")
    id: str | None = Field(None, pattern=NAME, description="The key's id (default: key_ and 16 hex digits).")
    tenant: str | None = Field(None, max_length=256, pattern=PRINTABLE, description="Only flows of this tenant.")
    workspace: str | None = Field(None, max_length=256, pattern=PRINTABLE, description="Only flows of this workspace.")
    envs: list[Env] | None = Field(None, min_length=1, description="Only these environments.")
    expires_in_s: int | None = Field(None, ge=1, le=MAX_EXPIRES_IN_S, strict=True,
                                     description="The key stops working this many seconds after it is made.")
    rate_limit: KeyRateLimit | None = Field(None, description="Per-key rate limits.")

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _whole_limits(cls, v: Any) -> Any:
        """JSON numbers only (lax parsing took true as 1 request a minute, "5" as 5)."""
        if isinstance(v, dict):
            for name, value in v.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{name} must be a whole number")
        return v

    @field_validator("envs", mode="before")
    @classmethod
    def _env_names(cls, v: Any) -> Any:
        """Environments as the routes take them: a name in any case, or 0/1/2."""
        if isinstance(v, list):
            return [Env.parse(item) or item if isinstance(item, str) and item else item for item in v]
        return v


def new_secret() -> str:
    """A fresh API-key secret (shown once; only its SHA-256 is kept)."""
    return "fg_" + secrets.token_urlsafe(32)


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def key_fingerprint(key: KeyConfig) -> str:
    """Which secret a key id stood for (16 hex digits of its digest): a stream token records it, so a
    token outlives neither its key's revocation nor a new key given the same id (a config key rotated
    by a reload, an API key re-made with the revoked one's id)."""
    return key.sha256[:16]


class KeyConflict(Exception):
    """The asked-for id is taken (by a config key or a store key), or the account is unknown."""


async def create_key(config: Config, store: Store, spec: KeySpec, now: float | None = None) -> tuple[str, dict]:
    """Make and store a key: ``(secret, record)``. The record holds the secret's SHA-256, never the
    secret. Raises :class:`KeyConflict` (id taken), ``LookupError`` (owner not an account)."""
    if spec.owner not in config.accounts:
        raise LookupError(f"{spec.owner!r} is not an account in the config")
    now = time.time() if now is None else now
    for _ in range(3):
        secret = new_secret()
        key_id = spec.id or "key_" + secrets.token_hex(8)
        if config.key_by_id(key_id) is not None:
            raise KeyConflict(f"{key_id!r} is the id of a key in the config file")
        record = {
            "id": key_id, "sha256": key_digest(secret), "owner": spec.owner,
            "policies": list(dict.fromkeys(spec.policies)), "tenant": spec.tenant, "workspace": spec.workspace,
            "envs": [e.value for e in spec.envs] if spec.envs else None,
            "rate_limit": spec.rate_limit.model_dump() if spec.rate_limit else None,
            "created_at": now, "expires_at": now + spec.expires_in_s if spec.expires_in_s else None,
        }
        status = await store.put_key(record)
        if status == "ok":
            log.info("key_created", key_id=key_id, owner=spec.owner, policies=record["policies"],
                     expires_at=record["expires_at"])
            return secret, record
        if status == "id_taken" and spec.id is not None:
            raise KeyConflict(f"a key with id {key_id!r} exists")
    raise KeyConflict("could not make a unique key (try again)")


def key_view(key: KeyConfig, source: str, created_at: float | None = None, expires_at: float | None = None,
             now: float | None = None) -> dict:
    """What a listing shows of a key: never its secret or its hash."""
    now = time.time() if now is None else now
    return {
        "id": key.id, "source": source, "owner": key.owner, "policies": list(key.policies), "tenant": key.tenant,
        "workspace": key.workspace, "envs": [e.value for e in key.envs] if key.envs else None,
        "rate_limit": key.rate_limit.model_dump(exclude_none=True) or None,
        "created_at": created_at, "expires_at": expires_at,
        "expired": expires_at is not None and now >= expires_at,
    }


async def all_keys(config: Config, store: Store) -> list[dict]:
    """Every key, config file's first, then the store's oldest first (read from the store, not a copy)."""
    out = [key_view(k, "config") for k in config.keys]
    for sk in map(store_key, await store.list_keys()):
        if sk is not None:
            out.append(key_view(sk.key, "api", sk.created_at, sk.expires_at))
    return out


async def revoke_key(config: Config, store: Store, key_id: str) -> bool:
    """Delete a store key: True when it existed. Raises :class:`KeyConflict` for a config file's key."""
    deleted = await store.delete_key(key_id)  # first: a store key the config shadowed later is revocable too
    if deleted:
        log.info("key_revoked", key_id=key_id)
    elif config.key_by_id(key_id) is not None:
        raise KeyConflict(f"{key_id!r} is a key of the config file: remove it there and reload")
    return deleted
