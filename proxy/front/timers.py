"""One periodic check for every client connection's deadline (as uvicorn and nginx keep timers).

A connection stores the loop time at which it must have made progress in ``deadline`` (0: none)
and implements ``expired(now)``; re-arming is one float store, so doing it on each read costs
nothing. One ``loop.call_later`` chain per server walks the open connections every ``tick``
seconds and calls ``expired`` on those past their deadline. It runs only while connections exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Protocol

import structlog

log = structlog.get_logger("flowgate.front")


class Timed(Protocol):
    deadline: float

    def expired(self, now: float) -> None: ...


class Ticker:
    def __init__(self, connections: Callable[[], Collection[Timed]], tick: float) -> None:
        self.connections = connections
        self.tick = tick
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def ensure(self) -> None:
        if self.handle is None:
            self.loop = asyncio.get_running_loop()
            self.handle = self.loop.call_later(self.tick, self._run)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _run(self) -> None:
        self.handle = None
        assert self.loop is not None
        now = self.loop.time()
        conns = self.connections()
        for conn in [c for c in conns if 0 < c.deadline <= now]:
            try:
                conn.expired(now)
            except Exception as exc:  # a timer must never stop the others
                log.error("timer_failed", error=type(exc).__name__)
        if conns:
            self.handle = self.loop.call_later(self.tick, self._run)
