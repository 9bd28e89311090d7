"""What a response body is pushed to (:class:`BodyConsumer`: the pump, or the compiled text path),
and :class:`Capped`, the stand-in that bounds what a non-streaming run buffers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .limits import TOO_LARGE


class BodyConsumer(Protocol):
    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def broken(self, message: str) -> None: ...

    def flush(self) -> None: ...


class Capped:
    """A consumer's stand-in that passes at most ``limit`` body bytes on, then drops the
    connection (a non-streaming run's buffer: ``server.max_buffered_response_bytes``). Only such
    runs pay for the count."""

    __slots__ = ("inner", "give_up", "left")

    def __init__(self, inner: BodyConsumer, give_up: Callable[[str, str], None], limit: int) -> None:
        self.inner, self.give_up, self.left = inner, give_up, limit  # give_up: the connection's, to drop it

    def body(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.give_up("the backend's response is larger than the gateway buffers", TOO_LARGE)
            return
        self.inner.body(data)

    def end(self) -> None:
        self.inner.end()

    def broken(self, message: str) -> None:
        self.inner.broken(message)

    def flush(self) -> None:
        self.inner.flush()
