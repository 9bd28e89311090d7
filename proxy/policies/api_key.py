"""API-key authentication: the presented secret is matched by its SHA-256, never stored in clear."""

from __future__ import annotations

from ..config import Config, KeyConfig
from ..errors import Forbidden, Unauthorized
from ..run import Run
from ..store import Store
from .base import Policy
from .keys import KeyRing, key_digest, new_secret

__all__ = ["ApiKey", "authenticate", "identify", "key_digest", "key_entry", "new_secret", "require"]


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


async def identify(keys: KeyRing, secret: str) -> KeyConfig:
    """The live key for a presented secret (config or store): 401 when there is none."""
    key = await keys.by_hash(key_digest(secret))
    if key is None:
        raise Unauthorized("invalid API key")
    return key


def require(key: KeyConfig, policy: str) -> KeyConfig:
    """``key`` when it holds ``policy``, else 403."""
    if policy not in key.policies:
        raise Forbidden(f"the API key lacks the {policy} policy")
    return key


async def authenticate(keys: KeyRing, secret: str, policy: str = "Execute") -> KeyConfig:
    """The key for a presented secret: 401 when unknown (or expired, or revoked), 403 without ``policy``."""
    return require(await identify(keys, secret), policy)


class ApiKey(Policy):
    """Resolves ``run.key``/``run.owner`` from the credential; 401 unknown, 403 without Execute.

    Scope (owner, tenant, workspace, envs) needs the flow, so :class:`Routing` checks it.
    """

    name = "api_key"

    def __init__(self, config: Config, store: Store, keys: KeyRing) -> None:
        super().__init__(config, store)
        self.keys = keys

    async def on_request(self, run: Run) -> None:
        key = await identify(self.keys, run.credential or "")
        run.key_id = key.id  # named in the access line of a 403 too
        require(key, "Execute")
        run.key, run.owner = key, key.owner
