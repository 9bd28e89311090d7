"""API-key authentication: the presented secret is matched by its SHA-256, never stored in clear."""

from __future__ import annotations

import hashlib
import secrets

from ..config import Config, KeyConfig
from ..errors import Forbidden, Unauthorized
from ..run import Run
from .base import Policy


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_secret() -> str:
    """A fresh API-key secret (shown once; only its SHA-256 is kept)."""
    return "fg_" + secrets.token_urlsafe(32)


def key_entry(secret: str, key_id: str, owner: str, policies: list[str], tenant: str | None,
              workspace: str | None, envs: list[str] | None) -> dict:
    """The ``keys:`` entry of a config for ``secret`` (its digest, never the secret)."""
    entry: dict = {"id": key_id, "sha256": key_digest(secret), "owner": owner, "policies": policies}
    if tenant:
        entry["tenant"] = tenant
    if workspace:
        entry["workspace"] = workspace
    if envs:
        entry["envs"] = envs
    return entry


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
