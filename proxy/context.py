"""The gateway's shared state for one app: config, store, the one ClientSession, the chains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import aiohttp

    from .config import Config
    from .policies import Policy
    from .store import Store


@dataclass(slots=True)
class Gateway:
    config: Config
    store: Store
    session: aiohttp.ClientSession | None = None
    chains: dict[str, list[Policy]] = field(default_factory=dict)


GATEWAY = web.AppKey("gateway", Gateway)
