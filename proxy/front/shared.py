"""What every connection of the front reads of the server it belongs to (the server,
:class:`proxy.front.FrontServer`, has these; the connections never import it)."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web

from .timers import Ticker


class Server(Protocol):
    app: web.Application
    inner: web.Server  # aiohttp's server, for what is handed over
    loop: asyncio.AbstractEventLoop
    connections: set[Any]  # every open connection, on the ticker's timers
    ticker: Ticker
    closing: bool
    head_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    write_timeout_s: float
    lingering_s: float
    max_connections: int
    max_body_bytes: int
    refused: int  # connections refused at the cap since the last log line
    refused_logged_at: float

    def match(self, method: str, path: str) -> tuple[Any, Any] | None:
        """(match info, handler) the front serves the request with (a dialect route, or a 404/405
        no route takes), or None: hand it over (see proxy.front.routing)."""
        ...
