"""What one backend response may cost the gateway: the size of its head, its header count, and
how long the backend may keep the gateway waiting (for the head, and between two reads of the
body). Set from ``server.upstream_*`` and ``backends.*.*_timeout_s`` (proxy/config.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import BodyConsumer, Connection

# Why a response failed, for the caller that maps it to a status (forward.body_failure).
TIMEOUT, TOO_LARGE, MALFORMED = "timeout", "too_large", "malformed"


@dataclass(frozen=True, slots=True)
class Limits:
    max_head_bytes: int = 65536  # the response head (status line, headers, interim 1xx heads): 502 beyond
    max_headers: int = 100  # header lines in the response head(s): 502 beyond
    head_timeout_s: float = 60.0  # from the request written to the response's head complete: 504 beyond
    read_timeout_s: float = 60.0  # no body byte for this long while the gateway reads: the stream breaks off


class Capped:
    """A consumer's stand-in that passes at most ``limit`` body bytes on, then drops the
    connection (a non-streaming run's buffer: ``server.max_buffered_response_bytes``). Only such
    runs pay for the count."""

    __slots__ = ("inner", "conn", "left")

    def __init__(self, inner: BodyConsumer, conn: Connection, limit: int) -> None:
        self.inner, self.conn, self.left = inner, conn, limit

    def body(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.conn._give_up("the backend's response is larger than the gateway buffers", TOO_LARGE)
            return
        self.inner.body(data)

    def end(self) -> None:
        self.inner.end()

    def broken(self, message: str) -> None:
        self.inner.broken(message)

    def flush(self) -> None:
        self.inner.flush()
