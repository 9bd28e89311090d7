"""Keep-alive connections per backend origin, one pool per app (``cleanup_ctx``)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping

from ..http1.request import request_head
from .connection import Connection
from .endpoint import Endpoint, endpoint
from .errors import UpstreamError, UpstreamTimeout
from .limits import Limits

DEFAULT_LIMITS = Limits()


class UpstreamPool:
    """Keep-alive connections per backend origin. A connection is reused only after a response
    that ended exactly where its framing said (nothing after it) and a backend that said nothing
    while it sat idle (a byte then drops it at once)."""

    def __init__(self, *, max_idle: int = 256, idle_timeout_s: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None, max_head_bytes: int = DEFAULT_LIMITS.max_head_bytes,
                 max_headers: int = DEFAULT_LIMITS.max_headers, max_buffered_response_bytes: int | None = None) -> None:
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self.max_head_bytes, self.max_headers = max_head_bytes, max_headers
        self.max_buffered_response_bytes = max_buffered_response_bytes  # a non-streaming run's body, at most
        self._limits: dict[int, tuple[object, Limits]] = {}
        self.default_limits = Limits(max_head_bytes, max_headers)
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._ssl = ssl_context  # https backends; default: the system's CAs, hostname checked

    def endpoint(self, url: str) -> Endpoint:
        ep = self._endpoints.get(url)
        if ep is None:
            ep = self._endpoints[url] = endpoint(url)
        return ep

    def limits(self, backend) -> Limits:
        """The limits of a response from ``backend`` (a BackendConfig: its ``head_timeout_s`` and
        ``read_timeout_s``), made once per backend config."""
        hit = self._limits.get(id(backend))
        if hit is None or hit[0] is not backend:
            hit = self._limits[id(backend)] = (backend, Limits(
                self.max_head_bytes, self.max_headers, backend.head_timeout_s, backend.read_timeout_s))
        return hit[1]

    async def request(self, ep: Endpoint, method: str, headers: Mapping[str, str], body: bytes,
                      limits: Limits | None = None, connect_timeout_s: float | None = None) -> Connection:
        """Send one request; returns the connection once the response's status and headers are in.
        Raises :class:`UpstreamError` (:class:`UpstreamTimeout` when the head is not in within
        ``limits.head_timeout_s``), ``TimeoutError`` when no connection is made within
        ``connect_timeout_s``, or ``OSError`` from connecting. On cancellation the connection is
        dropped."""
        limits = limits or self.default_limits
        has_body = bool(body) or method not in ("GET", "HEAD", "OPTIONS", "DELETE")
        head = request_head(method, ep.target, ep.host_header, headers, len(body) if has_body else None)
        for attempt in (0, 1):
            conn = self._take(ep.key)
            if conn is None:
                async with asyncio.timeout(connect_timeout_s):
                    conn = await self._connect(ep.key)
            try:
                await conn._exchange(head, body, limits)
                return conn
            except UpstreamError as exc:
                conn.close()
                if attempt == 0 and conn.reused and conn.received == 0 and not isinstance(exc, UpstreamTimeout):
                    continue  # the mark of a keep-alive connection the backend closed while idle
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _connect(self, key: tuple[str, str, int]) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            tls = self._ssl
        _, conn = await loop.create_connection(lambda: Connection(self, key), host, port, ssl=tls,
                                               server_hostname=host if tls else None)
        return conn

    def _take(self, key: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.transport is not None and not conn.transport.is_closing() and \
                    now - conn.idle_since < self.idle_timeout_s:
                conn.reused = True
                return conn
            conn.close()
        return None

    def _put(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        now = time.monotonic()
        if idle and now - idle[0].idle_since >= self.idle_timeout_s:  # drop the expired, oldest first
            keep = [c for c in idle if now - c.idle_since < self.idle_timeout_s]
            for c in idle:
                if now - c.idle_since >= self.idle_timeout_s:
                    c.close()
            idle[:] = keep
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        idle.append(conn)

    def _discard(self, conn: Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
