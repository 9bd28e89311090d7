"""Policies: small classes with the hooks a run passes through, in one literal, ordered chain.

Hooks (implement only those you need; the handler calls only overridden ones):

- ``async on_request(run)``: before anything reaches the backend. Reject by raising a typed
  :mod:`proxy.errors` exception; the dialect renders it. Headers are not sent yet.
- ``on_event(run, event)``: once per decoded backend event, on the hot path. Return ``None``, or an
  awaitable when you need I/O (e.g. growing a credit hold); the pump awaits it before writing on.
  Raise :class:`StopRun` to end the stream (the pump renders the format's error event or aborts).
- ``quiet(run)``: the companion of ``on_event`` for the compiled text path (:mod:`proxy.textpath`):
  ``(max_chars, until)`` such that ``on_event`` would do nothing for a text event while
  ``run.meter.chars <= max_chars`` (None: no such limit) and ``time.monotonic() < until``. Chunks
  inside both limits skip the hooks; the first past either calls them, then ``quiet`` again. A
  chain with an ``on_event`` policy that does not implement it streams every chunk in Python.
- ``async on_complete(run)``: exactly once after the run ended (``run.outcome`` is set), also when
  the client went away; only for policies whose ``on_request`` returned normally.

``build_chain`` is the single place the order is decided; its order is the execution order.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..context import Gateway
    from ..protocols import Event
    from ..run import Run


class StopRun(Exception):
    """Raised from ``on_event`` to end a run early with ``outcome`` (e.g. ``credits_cut``)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class Policy:
    name: ClassVar[str] = "policy"

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

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


def build_chain(gw: Gateway, credential: str) -> list[Policy]:
    """The policy chain for runs authenticated by ``credential`` ("key" or "token")."""
    from .api_key import ApiKey
    from .credits import Credits
    from .deadline import Deadline
    from .env import EnvPolicy
    from .rate_limit import RateLimit
    from .stream_token import StreamToken

    return [
        StreamToken(gw) if credential == "token" else ApiKey(gw),
        EnvPolicy(gw),
        RateLimit(gw),
        Credits(gw),
        Deadline(gw),
    ]
