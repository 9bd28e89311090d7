"""API-key authentication: the presented secret is matched by its SHA-256, never stored in clear."""

from __future__ import annotations

import hashlib

from ..config import Config, KeyConfig
from ..errors import Forbidden, Unauthorized
from ..run import Run
from .base import Policy


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def authenticate(config: Config, secret: str) -> KeyConfig:
    """The key for a presented secret: 401 when unknown, 403 without the Execute policy."""
    key = config.key_for_hash(key_digest(secret))
    if key is None:
        raise Unauthorized("invalid API key")
    if "Execute" not in key.policies:
        raise Forbidden("the API key lacks the Execute policy")
    return key


class ApiKey(Policy):
    """Resolves ``run.key``/``run.owner`` from the credential; 401 unknown, 403 without Execute.

    Scope (owner, tenant, workspace, envs) needs the flow, so :class:`Routing` checks it.
    """

    name = "api_key"

    async def on_request(self, run: Run) -> None:
        key = authenticate(self.config, run.credential or "")
        run.key, run.key_id, run.owner = key, key.id, key.owner
