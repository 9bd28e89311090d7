"""Single-use stream tokens for browsers: minted by a server holding a key, spent on one run.

Tokens are ``pub_tok_`` + 24 bytes in URL-safe base64: the mint time in milliseconds (6 bytes)
and 144 random bits. Only a digest is stored (the mint time in hex, then the token's SHA-256), with
the owner, the minting key's id and fingerprint, an optional flow binding and the expiry. The time
first keeps the store's token table in mint order: each mint and spend writes where the last ones
did, instead of a random page of an hour of tokens (on SQLite a token run cost ~25 µs less of
store CPU with 60,000 tokens in the table: bench/micro-style measurement in docs/benchmark.md).
Spending is one atomic check-and-mark in the store, done before the flow lookup, so replays and
enumeration each cost a token; a malformed token string is refused without a store round trip.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time

from .. import metrics as m
from ..config import Config
from ..errors import InvalidToken
from ..run import Run
from ..store import Store
from .base import Policy
from .keys import KeyRing, key_fingerprint

TOKEN_PREFIX = "pub_tok_"
TOKEN_RE = re.compile(r"pub_tok_[A-Za-z0-9_-]{32}")


RANDOM_BYTES = 18  # 144 bits after the 6 bytes of the mint time
_POOL_BYTES = RANDOM_BYTES * 256
_pool = b""
# a token whose first 6 bytes are no time near now was minted before tokens carried one (its
# digest is its SHA-256 alone); a random prefix falls in this window with odds of ~1 in a million
_LEGACY_MS = 2 * 86_400_000
_past_ms = [_LEGACY_MS]  # how old a time-keyed token may be and still be spent: widened by allow_lifetime


def new_token(now_ms: int | None = None) -> str:
    """``pub_tok_`` + the mint time (ms, 6 bytes) + 144 bits from the OS CSPRNG (read 256 tokens'
    worth per syscall)."""
    global _pool
    if len(_pool) < RANDOM_BYTES:
        _pool = secrets.token_bytes(_POOL_BYTES)
    raw, _pool = _pool[:RANDOM_BYTES], _pool[RANDOM_BYTES:]
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return TOKEN_PREFIX + base64.urlsafe_b64encode(ms.to_bytes(6, "big") + raw).decode()


# base64url's alphabet (by value) onto the same characters in ASCII order: the first 8 characters
# of a token (its 48-bit mint time) then sort as the times do, without decoding them
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ORDERED = str.maketrans(_B64URL, "".join(sorted(_B64URL)))
_window: list = [-1, "", ""]  # the second it was computed for, and the bounds of "a time near now"


def _near_now() -> tuple[str, str]:
    second = int(time.time())
    if second != _window[0]:
        now_ms = second * 1000
        _window[:] = [second, *(base64.urlsafe_b64encode(ms.to_bytes(6, "big")).decode().translate(_ORDERED)
                                for ms in (max(0, now_ms - _past_ms[0]), now_ms + _LEGACY_MS))]
    return _window[1], _window[2]


def allow_lifetime(ttl_max_s: int) -> None:
    """Tokens may live ``ttl_max_s`` (``limits.token_ttl_max_s`` has no upper bound) and answer
    "expired" an hour after: the window's past side covers that, or a token older than 2 days
    would be looked up under its legacy key and not found. Only ever widened (the process's configs)."""
    past = (ttl_max_s + 2 * 3600) * 1000
    if past > _past_ms[0]:
        _past_ms[0] = past
        _window[0] = -1


def token_digest(token: str) -> str:
    """What the store keys a token by: its mint time (8 characters that sort as the time does) and
    its SHA-256; a token of the old form (no time near now in front) by its SHA-256 alone."""
    sha = hashlib.sha256(token.encode("ascii")).hexdigest()
    stamp = token[8:16].translate(_ORDERED)
    low, high = _near_now()
    return stamp + sha if low <= stamp <= high else sha


class StreamToken(Policy):
    """Consumes the run's token; sets ``run.key``/``run.owner``/``run.bound_flow`` from its record.

    The scope check against the flow (owner, binding, the minting key's scope) is in Routing.
    """

    name = "stream_token"

    def __init__(self, config: Config, store: Store, keys: KeyRing) -> None:
        super().__init__(config, store)
        self.keys = keys
        allow_lifetime(config.limits.token_ttl_max_s)

    async def on_request(self, run: Run) -> None:
        token = run.credential or ""
        if TOKEN_RE.fullmatch(token) is None:
            self._refuse(run, "malformed")
        status, record = await self.store.consume_token(token_digest(token))
        if status != "ok" or record is None:
            self._refuse(run, status)
        m.STREAM_TOKENS_CONSUMED.inc()
        run.key_id = record.get("key_id")
        key = await self.keys.by_id(run.key_id or "")  # revoked or expired since the mint: refused
        run.key = key
        run.owner = record.get("owner")
        run.bound_flow = record.get("flow_id")
        fingerprint = record.get("key_fp")  # (None: a token minted before tokens recorded it)
        if key is None or key.owner != run.owner or (fingerprint is not None and fingerprint != key_fingerprint(key)):
            self._refuse(run, "key_revoked")  # revoked, expired, or its id now names another secret

    @staticmethod
    def _refuse(run: Run, reason: str) -> None:
        run.reason = f"token_{reason}"
        m.child(m.STREAM_TOKENS_REFUSED, reason).inc()
        raise InvalidToken("invalid or expired stream token")
