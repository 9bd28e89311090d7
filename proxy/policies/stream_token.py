"""Single-use stream tokens for browsers: minted by a server holding a key, spent on one run.

Tokens are ``pub_tok_`` + 192 random bits (URL-safe base64). Only their SHA-256 is stored, with the
owner, the minting key's id, an optional flow binding and the expiry. Spending is one atomic
check-and-mark in the store, done before the flow lookup, so replays and enumeration each cost a
token; a malformed token string is refused without a store round trip.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from .. import metrics as m
from ..config import Config
from ..errors import InvalidToken
from ..run import Run
from ..store import Store
from .base import Policy
from .keys import KeyRing, key_fingerprint

TOKEN_PREFIX = "pub_tok_"
TOKEN_RE = re.compile(r"pub_tok_[A-Za-z0-9_-]{32}")


_POOL_BYTES = 24 * 256
_pool = b""


def new_token() -> str:
    """``pub_tok_`` + 192 bits from the OS CSPRNG, read 256 tokens' worth per syscall."""
    global _pool
    if len(_pool) < 24:
        _pool = secrets.token_bytes(_POOL_BYTES)
    raw, _pool = _pool[:24], _pool[24:]
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


class StreamToken(Policy):
    """Consumes the run's token; sets ``run.key``/``run.owner``/``run.bound_flow`` from its record.

    The scope check against the flow (owner, binding, the minting key's scope) is in Routing.
    """

    name = "stream_token"

    def __init__(self, config: Config, store: Store, keys: KeyRing) -> None:
        super().__init__(config, store)
        self.keys = keys

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
