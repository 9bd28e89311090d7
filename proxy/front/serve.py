"""Serving: the gateway's app on its listeners (and the metrics listener), until SIGINT/SIGTERM,
taking a new config on SIGHUP (:mod:`proxy.front.reload`).

``flowgate serve`` and ``flowgate demo`` both run it: the CLI parses arguments and loads the config,
and imports this module only to serve (its other commands stay light); the demo starts its backend
beside it. With ``server.workers`` above 1, each worker the supervisor
(:mod:`proxy.front.supervisor`) starts runs it on the listeners the supervisor bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


def install_uvloop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve_forever(config: Config, *, ready: asyncio.Future | None = None,
                        listeners: list[socket.socket] | None = None,
                        reload_source: Callable[[Config], Config | None] | None = None,
                        worker: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM; open streams get ``server.shutdown_timeout_s`` to finish.

    ``listeners``: sockets already bound and listening (a worker's, from its supervisor: the main
    one, then the metrics one when ``server.metrics_port`` is set); else this binds its own.
    ``reload_source``: on SIGHUP, what to swap to (given the config in force; None = keep it).
    """
    from aiohttp import web

    from ..api.ops import metrics_view
    from ..app import create_app
    from ..context import GATEWAY
    from . import FRONT_ROUTES, GatewayRunner
    from .reload import apply

    app = create_app(config)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.server.shutdown_timeout_s,
                           keepalive_timeout=config.server.client_keepalive_timeout_s)
    await runner.setup()
    if listeners:
        await web.SockSite(runner, listeners[0]).start()
    else:
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
        if listeners:
            await web.SockSite(mrunner, listeners[1]).start()
        else:
            await web.TCPSite(mrunner, config.server.host, config.server.metrics_port).start()
        runners.append(mrunner)
    import structlog

    log = structlog.get_logger("flowgate")
    if worker is None:
        log.info("listening", host=config.server.host, port=config.server.port, store=config.store.split("://")[0])
    else:
        log.info("worker_started", worker=worker, pid=os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    reloading = asyncio.Lock()

    async def reload() -> None:
        async with reloading:  # one at a time, in the order asked
            try:
                new = reload_source(app[GATEWAY].config) if reload_source is not None else None
                if new is not None:
                    await apply(app[GATEWAY], new)
                    log.info("config_swapped", worker=worker, generation=app[GATEWAY].generation)
            except Exception:  # the config in force stays; the server goes on
                log.exception("reload_failed", worker=worker)

    tasks: set[asyncio.Task] = set()

    def on_hup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    if worker is not None:
        on_hup()  # a reload the supervisor handed over while this worker was starting
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
