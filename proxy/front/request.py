"""The request object the front protocol hands to the dialect routes' handlers.

It offers the part of ``aiohttp.web.Request`` that flowgate's handlers, dialects, policies and the
access middleware read (``method``, ``headers``, ``query``, ``match_info``, ``content``, ``app``,
``remote``, ``scheme``, ``transport``, ``request[key]``) and nothing else. If you make a handler
read more of the request, add it here too: the suite runs every dialect route through this class.

It is small on purpose: an open stream keeps its request alive for the whole run, so everything
here is made lazily (the query) or kept as it came (the headers, one multidict).

It never sees the protocol that made it: it gets the connection's
:class:`~proxy.http1.flow.FlowControl` (the transport, for ``transport`` and ``remote``) and two
callbacks: the body's ``want_body()`` (the handler starts reading the body) and ``start_stream``
(send a chunked response's head; its body then goes through the returned sink).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDictProxy
from yarl import URL

if TYPE_CHECKING:
    from ..http1.flow import FlowControl
    from ..stream.sinks import ClientSink

    StartStream = Callable[[int, Mapping[str, str]], ClientSink]


class Body:
    """The request body as it arrives: ``iter_any()`` yields pieces until the message ended.

    The protocol appends with :meth:`feed` and ends it with :meth:`finish` (or :meth:`fail`, when
    the body timer fired: the reader then raises that error); at most ``server.max_body_bytes`` + 1
    bytes are kept (the dialect answers 413 above the limit). The protocol reads nothing of the
    body until the first ``iter_any()`` tells it the handler wants it (``want_body()``, after the
    credential and admission checks), so a refused request costs one socket read at most."""

    __slots__ = ("parts", "done", "waiter", "kept", "limit", "want_body", "started", "error")

    def __init__(self, limit: int, want_body: Callable[[], None] | None = None) -> None:
        self.parts: list[bytes] = []
        self.done = False
        self.waiter: asyncio.Future[None] | None = None
        self.kept = 0
        self.limit = limit
        self.want_body = want_body
        self.started = False
        self.error: Exception | None = None

    def feed(self, data: bytes) -> None:
        room = self.limit + 1 - self.kept
        if room <= 0:
            return
        if len(data) > room:
            data = data[:room]
        self.parts.append(data)
        self.kept += len(data)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, error: Exception) -> None:
        self.error = error
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def iter_any(self) -> AsyncIterator[bytes]:
        if not self.started:
            self.started = True
            if self.want_body is not None:
                self.want_body()
        while True:
            if self.error is not None:
                raise self.error
            if self.parts:
                parts, self.parts = self.parts, []
                for part in parts:
                    yield part
                continue
            if self.done or self.kept > self.limit:
                return
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None


class FrontRequest:
    """One parsed request head (HTTP/1.1, no body or a Content-Length body) and its body.

    ``start_stream(status, headers)`` sends a chunked response's status line and headers on the
    connection and returns the :class:`~proxy.stream.sinks.ClientSink` its body goes through (what
    :func:`proxy.stream.sinks.open_client` calls for a request the front serves)."""

    __slots__ = ("method", "raw_path", "query_string", "headers", "match_info", "content_length", "content",
                 "app", "flow", "start_stream", "_query", "_state")

    def __init__(
        self,
        method: str,
        raw_path: str,
        query_string: str,
        headers: CIMultiDictProxy[str],
        match_info: web.UrlMappingMatchInfo,
        content_length: int | None,
        content: Body,
        app: web.Application,
        flow: FlowControl,
        start_stream: StartStream,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query_string = query_string
        self.headers = headers
        self.match_info = match_info
        self.content_length = content_length
        self.content = content
        self.app = app
        self.flow = flow
        self.start_stream = start_stream
        self._query: MultiDictProxy[str] | None = None
        self._state: dict[Any, Any] | None = None

    @property
    def query(self) -> MultiDictProxy[str]:
        """Parsed as aiohttp parses it (yarl), so every dialect sees the same values either way."""
        if self._query is None:
            self._query = URL.build(query_string=self.query_string, encoded=True).query
        return self._query

    @property
    def body_exists(self) -> bool:
        return bool(self.content_length)

    @property
    def body_complete(self) -> bool:
        """The whole body is here (it came with the head): reading it cannot wait."""
        content = self.content
        return content.done and content.error is None

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.flow.transport

    @property
    def remote(self) -> str | None:
        transport = self.flow.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, (list, tuple)):
            return str(peer[0])
        return None if peer is None else str(peer)

    @property
    def scheme(self) -> str:
        transport = self.flow.transport  # (as aiohttp's request reads it: a TLS transport has its context)
        return "https" if transport is not None and transport.get_extra_info("sslcontext") is not None else "http"

    @property
    def path(self) -> str:
        return URL.build(path=self.raw_path, encoded=True).path

    async def read(self) -> bytes:
        return b"".join([part async for part in self.content.iter_any()])

    # request[key] state, as aiohttp's request offers it (RequestKey or str)
    def __setitem__(self, key: Any, value: Any) -> None:
        if self._state is None:
            self._state = {}
        self._state[key] = value

    def __getitem__(self, key: Any) -> Any:
        if self._state is None:
            raise KeyError(key)
        return self._state[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return default if self._state is None else self._state.get(key, default)
