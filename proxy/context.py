"""The gateway's shared state for one app: config, store, the one upstream pool, the chains."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .balances import Balances
    from .config import Config
    from .policies import Chain
    from .policies.hold_size import HoldSizer
    from .policies.keys import KeyRing
    from .store import Store
    from .upstream import UpstreamPool


@dataclass(slots=True)
class Gateway:
    config: Config
    store: Store
    upstreams: UpstreamPool | None = None
    chains: dict[str, Chain] = field(default_factory=dict)  # the policy chain per credential kind
    hold_sizer: HoldSizer | None = None  # first credit holds per flow (shared by the chains)
    balances: Balances | None = None  # the account balance gauge
    keys: KeyRing | None = None  # config keys and the admin API's


GATEWAY = web.AppKey("gateway", Gateway)
