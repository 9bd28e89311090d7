"""The one timer of a response in flight, never a clock per chunk: the head must be complete
within ``head_timeout_s`` of the request, then the body must make progress at least every
``read_timeout_s`` while the gateway reads it. The timer compares a byte count (the
connection's, plus what the compiled text path read when it took the socket) at intervals of a
quarter of the timeout, so a stall is found between 1 and 1.25 timeouts after the last byte; a
paused connection (a client that is not reading, a hook awaiting the store) is not stalled.

A mixin of :class:`~proxy.upstream.connection.Connection`, whose slots it uses.
"""

from __future__ import annotations

import asyncio
import time

from .limits import TIMEOUT


class ResponseTimer:
    __slots__ = ()

    def _watch_head(self, loop: asyncio.AbstractEventLoop) -> None:
        self.deadline = time.monotonic() + self.limits.head_timeout_s
        self.timer = loop.call_later(self.limits.head_timeout_s, self._tick)

    def _watch_body(self) -> None:
        self._disarm()
        self.mark, self.progress_at = self.received, time.monotonic()
        self.timer = asyncio.get_running_loop().call_later(self.limits.read_timeout_s / 4, self._tick)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        self.timer = None
        if self.complete or self.failed is not None or self.transport is None:
            return
        limits, now = self.limits, time.monotonic()
        if not self.headers_in:
            if now < self.deadline:
                self.timer = asyncio.get_running_loop().call_later(self.deadline - now, self._tick)
            else:
                self._give_up(f"the backend sent no response head within {limits.head_timeout_s:g} s", TIMEOUT)
            return
        taken = self.taken
        progress = self.received + (taken.raw_in if taken is not None else 0)
        if progress != self.mark or self.reading_paused:
            self.mark, self.progress_at = progress, now
        elif now - self.progress_at >= limits.read_timeout_s:
            self._give_up(f"the backend sent nothing for {limits.read_timeout_s:g} s", TIMEOUT)
            return
        self.timer = asyncio.get_running_loop().call_later(limits.read_timeout_s / 4, self._tick)
