"""Serving: the gateway's app on its listeners (and the metrics listener), until SIGINT/SIGTERM.

``flowgate serve`` and ``flowgate demo`` both run it: the CLI parses arguments and loads the config,
and imports this module only to serve (its other commands stay light); the demo starts its backend
beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


def install_uvloop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve_forever(config: Config, *, ready: asyncio.Future | None = None) -> None:
    """Serve until SIGINT/SIGTERM; open streams get ``server.shutdown_timeout_s`` to finish."""
    from aiohttp import web

    from ..api.ops import metrics_view
    from ..app import create_app
    from ..context import GATEWAY
    from . import FRONT_ROUTES, GatewayRunner

    app = create_app(config)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.server.shutdown_timeout_s,
                           keepalive_timeout=config.server.client_keepalive_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, config.server.host, config.server.port, backlog=config.server.backlog,
                       reuse_address=True)
    await site.start()
    runners = [runner]
    if config.server.metrics_port is not None:
        # served as the main listener is (timers, connection cap, error answers that quote nothing)
        mapp = web.Application()
        mapp.router.add_get("/metrics", metrics_view)
        mapp[GATEWAY], mapp[FRONT_ROUTES] = app[GATEWAY], []
        mrunner = GatewayRunner(mapp, access_log=None, keepalive_timeout=config.server.client_keepalive_timeout_s)
        await mrunner.setup()
        await web.TCPSite(mrunner, config.server.host, config.server.metrics_port).start()
        runners.append(mrunner)
    import structlog

    structlog.get_logger("flowgate").info(
        "listening", host=config.server.host, port=config.server.port, store=config.store.split("://")[0]
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set_result(app)
    tune_gc()
    try:
        await stop.wait()
    finally:
        for r in reversed(runners):
            await r.cleanup()


def tune_gc() -> None:
    """Everything alive at startup (modules, config, app, routes) moves to the permanent
    generation, so the cyclic GC's full passes stop re-walking it under load. The thresholds stay
    at their defaults: larger young generations made rarer but longer pauses, which showed up in
    the p99 line latency."""
    import gc

    gc.collect()
    gc.freeze()
