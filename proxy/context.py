"""The gateway's shared state for one app: config, store, the one upstream pool, the chains.

A reload (:mod:`proxy.front.reload`) lands in one place, :meth:`Gateway.swap`: the config, the
chains built from it and the first-hold sizer change together, between two requests (one event
loop: nothing runs in between). A run takes the chain in force when it arrives and keeps it to its
end, so runs already open finish under the config they started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .balances import Balances
    from .config import Config
    from .policies import Chain
    from .policies.checkpoints import Checkpoints
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
    checkpoints: Checkpoints | None = None  # this process's credit checkpoints, written in batches
    keys: KeyRing | None = None  # config keys and the admin API's
    generation: int = 0  # how many reloads this gateway has taken

    def swap(self, config: Config, chains: dict[str, Chain], hold_sizer: HoldSizer | None, keys: KeyRing) -> None:
        """New requests see ``config`` (its chains and keys) from now on; admitted runs keep what they hold."""
        self.config, self.chains, self.hold_sizer, self.keys = config, chains, hold_sizer, keys
        self.generation += 1


GATEWAY = web.AppKey("gateway", Gateway)
