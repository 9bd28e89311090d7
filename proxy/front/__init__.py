"""The front: how client connections reach the app.

:class:`GatewayRunner` is aiohttp's ``AppRunner`` whose protocol factory is a :class:`FrontServer`
(when ``server.front`` is ``flowgate``, the default): each connection starts on flowgate's own
HTTP/1.1 protocol (:mod:`proxy.front.protocol`), which serves the dialect routes and hands
every other valid request to aiohttp's server, which it wraps (:mod:`proxy.front.handover`). Every
connection, handed over or not, is in :attr:`FrontServer.connections` (capped by
``server.max_connections``: beyond it a connection is answered 503 and closed) and on the timers
one :class:`~proxy.front.timers.Ticker` checks. Sites (``web.TCPSite``, the test server) use
it unchanged, and shutdown goes through both.

The routes served here are the ones :func:`proxy.app.create_app` lists under :data:`FRONT_ROUTES`;
their handlers run under the app's middlewares, exactly as aiohttp would run them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from ..context import GATEWAY
from .handover import QuietServer
from .protocol import FrontProtocol
from .routing import Routes
from .timers import Ticker

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FRONT_ROUTES = web.AppKey("front_routes", list)  # the routes (web.AbstractRoute) served by the front

class FrontServer:
    """The protocol factory, and what aiohttp's runner asks of a server (``pre_shutdown``, ``shutdown``)."""

    def __init__(self, app: web.Application, inner: web.Server) -> None:
        self.app = app
        self.inner = inner
        server = app[GATEWAY].config.server
        self.keepalive_timeout_s = server.client_keepalive_timeout_s
        self.head_timeout_s = server.client_head_timeout_s
        self.body_timeout_s = server.client_body_timeout_s
        self.write_timeout_s = server.client_write_timeout_s
        self.lingering_s = server.client_lingering_s
        self.max_connections = server.max_connections
        self.refused, self.refused_logged_at = 0, -1.0  # connections refused at the cap (logged once a second)
        self.max_body_bytes = server.max_body_bytes
        self.loop = asyncio.get_running_loop()
        # every open connection: served by the front, or handed to aiohttp (HandedOver), on its timers
        self.connections: set = set()
        tick = min(self.keepalive_timeout_s, self.head_timeout_s, self.body_timeout_s, self.write_timeout_s,
                   self.lingering_s) / 4
        self.ticker = Ticker(lambda: self.connections, max(0.02, min(tick, 1.0)))
        self.closing = False
        # a request no route takes (404, 405) is answered here too, under every middleware (the
        # access line, the problem+json body), as aiohttp would answer it: see proxy.front.routing
        self.routes = Routes(app.router, app[FRONT_ROUTES], _with_middlewares(app),
                             refuse=_with_middlewares(app, routed=False)(_raise_refusal))

    def __call__(self) -> FrontProtocol:
        return FrontProtocol(self)

    def match(self, method: str, path: str) -> tuple[UrlMappingMatchInfo, Handler] | None:
        return self.routes.route(method, path)

    def pre_shutdown(self) -> None:
        self.closing = True
        for conn in list(self.connections):
            conn.close_if_idle()
        self.inner.pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Requests in flight get ``timeout`` seconds to finish, then are cancelled."""
        tasks = [c.task for c in self.connections if getattr(c, "task", None) is not None]
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
        self.ticker.stop()


async def _raise_refusal(request: web.Request) -> web.StreamResponse:
    """The handler of a request no route takes: aiohttp's 404 or 405, rendered by the middlewares.
    A new exception, not the match info's: raised, an exception keeps its traceback, whose frames
    keep the request, whose match info would keep the exception (a cycle per answer, the request's
    body with it, left for the cyclic GC)."""
    refused = request.match_info.http_exception  # type: ignore[attr-defined] # a MatchInfoError
    if isinstance(refused, web.HTTPMethodNotAllowed):
        raise web.HTTPMethodNotAllowed(refused.method, refused.allowed_methods)
    raise web.HTTPNotFound()


def _with_middlewares(app: web.Application, routed: bool = True) -> Callable[[Handler], Handler]:
    """The app's middlewares around a route's handler; for a route served here (``routed``), less
    those that only act on aiohttp's own routing (``front_skips``: the route was matched, so they
    would only add a frame)."""
    middlewares = [mw for mw in app.middlewares if not (routed and getattr(mw, "front_skips", False))]

    def wrap(handler: Handler) -> Handler:
        for mw in reversed(middlewares):
            handler = partial(mw, handler=handler)
        return handler

    return wrap


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving the app through the front (see the module docstring)."""

    async def _make_server(self) -> web.Server:
        inner = await super()._make_server()
        inner.__class__ = QuietServer  # its handlers' error answers never quote the request
        server = self.app[GATEWAY].config.server
        if server.front != "flowgate":
            return inner
        return FrontServer(self.app, inner)  # type: ignore[return-value]
