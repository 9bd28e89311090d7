"""The front: how client connections reach the app.

:class:`GatewayRunner` is aiohttp's ``AppRunner`` whose protocol factory is a :class:`FrontServer`
(when ``server.front`` is ``flowgate``, the default): each connection starts on flowgate's own
HTTP/1.1 protocol (:mod:`proxy.front.protocol`), which serves the dialect routes and hands
everything else to aiohttp's server, which it wraps. Sites (``web.TCPSite``, the test server) use
it unchanged, and shutdown goes through both.

The routes served here are the ones :func:`proxy.app.create_app` lists under :data:`FRONT_ROUTES`;
their handlers run under the app's middlewares, exactly as aiohttp would run them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from ..context import GATEWAY
from .protocol import FrontProtocol

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FRONT_ROUTES = web.AppKey("front_routes", list)  # the routes (web.AbstractRoute) served by the front

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _pattern(canonical: str) -> re.Pattern[str]:
    """A route template as aiohttp reads it (``{name}`` is one path segment), for paths without
    ``%``-escapes (the front hands those to aiohttp, whose decoding rules then apply)."""
    out, last = [], 0
    for m in _PARAM.finditer(canonical):
        out += (re.escape(canonical[last:m.start()]), f"(?P<{m.group(1)}>[^{{}}/]+)")
        last = m.end()
    out.append(re.escape(canonical[last:]))
    return re.compile("".join(out))


class FrontServer:
    """The protocol factory, and what aiohttp's runner asks of a server (``pre_shutdown``, ``shutdown``)."""

    def __init__(self, app: web.Application, inner: web.Server, keepalive_timeout_s: float) -> None:
        self.app = app
        self.inner = inner
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_body_bytes = app[GATEWAY].config.server.max_body_bytes
        self.connections: set[FrontProtocol] = set()
        self.closing = False
        handler_for = _with_middlewares(app)
        self.routes = [(_pattern(r.resource.canonical), r.method, r, handler_for(r.handler))
                       for r in app[FRONT_ROUTES] if r.resource is not None]

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def match(self, method: str, path: str) -> tuple[UrlMappingMatchInfo, Handler] | None:
        if "%" in path or "/." in path:
            return None  # escaped or dot segments: aiohttp's rules
        for pattern, route_method, route, handler in self.routes:
            m = pattern.fullmatch(path)
            if m is not None and route_method == method:
                return UrlMappingMatchInfo(m.groupdict(), route), handler
        return None

    def pre_shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
        self.inner.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Requests in flight get ``timeout`` seconds to finish, then are cancelled."""
        tasks = [c.task for c in self.connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.inner.shutdown(timeout)


def _with_middlewares(app: web.Application) -> Callable[[Handler], Handler]:
    middlewares = list(app.middlewares)

    def wrap(handler: Handler) -> Handler:
        for mw in reversed(middlewares):
            handler = partial(mw, handler=handler)
        return handler

    return wrap


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving the app through the front (see the module docstring)."""

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        server = self.app[GATEWAY].config.server
        if server.front != "flowgate":
            return inner
        return FrontServer(self.app, inner, server.client_keepalive_timeout_s)  # type: ignore[return-value]
