"""The policy chain: one ordered list per credential kind, built in one place (its order is the
execution order), and the small runner the handler and the pump use.

:class:`Chain` owns the policies, their per-event hooks and the compiled path's quiet limits:
``admit`` runs ``on_request`` in order, ``hooks_of`` steps one event through the ``on_event`` hooks
and stops at the first that must be awaited (the pump pauses the backend until it is done, then
``hooks_of`` goes on from the next hook), ``complete`` runs ``on_complete`` once for each policy
that admitted the run, whatever the ending.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from .api_key import ApiKey
from .base import Policy
from .credits import Credits
from .rate_limit import RateLimit
from .routing import Routing
from .stream_token import StreamToken

if TYPE_CHECKING:
    from ..balances import Balances
    from ..config import Config
    from ..protocols import Event
    from ..run import Run
    from ..store import Store
    from .checkpoints import Checkpoints
    from .hold_size import HoldSizer
    from .keys import KeyRing

log = structlog.get_logger("flowgate.run")

Hook = Callable[["Run", "Event"], "Awaitable[None] | None"]
Quiet = Callable[["Run"], "tuple[int | None, float]"]


class Chain:
    __slots__ = ("policies", "hooks", "quiet")

    def __init__(self, policies: list[Policy], compiled: bool) -> None:
        self.policies = policies
        events = [p for p in policies if p.overrides("on_event")]
        self.hooks: list[Hook] = [p.on_event for p in events]
        # the compiled text path's limits: only when every on_event policy says when it is quiet
        self.quiet: list[Quiet] | None = (
            [p.quiet for p in events] if compiled and all(p.overrides("quiet") for p in events) else None)

    @classmethod
    def of_hooks(cls, hooks: list[Hook], quiet: list[Quiet] | None = None) -> Chain:
        """A chain of bare hooks (no admission, no completion): for a pump driven by hand."""
        chain = cls([], compiled=False)
        chain.hooks, chain.quiet = list(hooks), quiet
        return chain

    async def admit(self, run: Run, admitted: list[Policy]) -> None:
        """``on_request`` of each policy in order; each that passes is appended to ``admitted``
        (a typed error from one ends admission: the dialect renders it)."""
        for policy in self.policies:
            await policy.on_request(run)
            admitted.append(policy)

    def hooks_of(self, run: Run, event: Event, k: int = 0) -> tuple[Awaitable[None], int] | None:
        """``event`` through the hooks from hook ``k``: None once all ran, or (awaitable, next hook)
        when one must complete first. A hook's :class:`~proxy.policies.StopRun` propagates."""
        hooks = self.hooks
        while k < len(hooks):
            pending = hooks[k](run, event)
            k += 1
            if pending is not None:
                return pending, k
        return None

    @staticmethod
    async def complete(run: Run, admitted: list[Policy]) -> None:
        """``on_complete`` of each admitted policy; one's failure never skips another's settlement."""
        for policy in admitted:
            try:
                await policy.on_complete(run)
            except Exception:
                log.exception("on_complete_failed", policy=policy.name)


def build_chains(config: Config, store: Store, keys: KeyRing, sizer: HoldSizer | None,
                 balances: Balances | None, checkpoints: Checkpoints | None) -> dict[str, Chain]:
    """The chain of each credential kind ("key", "token"), as the gateway holds them (and a reload
    swaps them); ``checkpoints``: the process's batcher, which its shutdown flushes."""
    return {kind: build_chain(config, store, keys, sizer, balances, kind, checkpoints) for kind in ("key", "token")}


def build_chain(config: Config, store: Store, keys: KeyRing, sizer: HoldSizer | None, balances: Balances | None,
                credential: str, checkpoints: Checkpoints | None) -> Chain:
    """The policy chain for runs authenticated by ``credential`` ("key" or "token")."""
    return Chain([
        StreamToken(config, store, keys) if credential == "token" else ApiKey(config, store, keys),
        Routing(config, store),
        RateLimit(config, store),
        Credits(config, store, sizer, balances, checkpoints),
    ], compiled=config.server.compiled_text_path)
