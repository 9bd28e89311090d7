"""The policy base class and the typed stop a hook raises (:mod:`proxy.policies` says how the
hooks are used; :mod:`proxy.policies.chain` builds the chain)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..config import Config
    from ..protocols import Event
    from ..run import Run
    from ..store import Store


class StopRun(Exception):
    """Raised from ``on_event`` to end a run early with ``outcome`` (e.g. ``credits_cut``)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class Policy:
    """A policy gets what it uses (the config and the store), never the whole gateway."""

    name: ClassVar[str] = "policy"

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store

    async def on_request(self, run: Run) -> None:
        return None

    def on_event(self, run: Run, event: Event) -> Awaitable[None] | None:
        return None

    def quiet(self, run: Run) -> tuple[int | None, float]:
        return 0, 0.0  # never quiet

    async def on_complete(self, run: Run) -> None:
        return None

    @classmethod
    def overrides(cls, hook: str) -> bool:
        return getattr(cls, hook) is not getattr(Policy, hook)
