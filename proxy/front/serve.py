"""Serving: the gateway's app on its listeners (and the metrics listener), until SIGINT/SIGTERM.

A listener with ``tls`` set speaks HTTPS (:mod:`proxy.front.tls`); SIGHUP re-reads every
listener's certificate files through :func:`proxy.front.tls.reload_tls`.

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
    from .tls import Site, TlsListener, reload_tls

    server = config.server
    tls = [TlsListener("main", server.tls)] if server.tls else []

    def site(runner: web.BaseRunner, port: int, listener: TlsListener | None, **kwargs) -> Site:
        """A listener, TLS or plain. (An admin listener: ``site(arunner, server.admin_port, TlsListener("admin",
        server.admin_tls) if server.admin_tls else None)``, its TlsListener added to ``tls`` for SIGHUP.)"""
        return Site(runner, server.host, port, tls=listener, handshake_timeout_s=server.client_head_timeout_s,
                    shutdown_timeout_s=server.client_write_timeout_s, **kwargs)

    app = create_app(config)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.server.shutdown_timeout_s,
                           keepalive_timeout=config.server.client_keepalive_timeout_s)
    await runner.setup()
    await site(runner, server.port, tls[0] if tls else None, backlog=server.backlog, reuse_address=True).start()
    runners = [runner]
    if config.server.metrics_port is not None:
        # served as the main listener is (timers, connection cap, error answers that quote nothing)
        mapp = web.Application()
        mapp.router.add_get("/metrics", metrics_view)
        mapp[GATEWAY], mapp[FRONT_ROUTES] = app[GATEWAY], []
        mrunner = GatewayRunner(mapp, access_log=None, keepalive_timeout=config.server.client_keepalive_timeout_s)
        await mrunner.setup()
        metrics_tls = TlsListener("metrics", server.metrics_tls) if server.metrics_tls else None
        tls += [metrics_tls] if metrics_tls else []
        await site(mrunner, server.metrics_port, metrics_tls).start()
        runners.append(mrunner)
    import structlog

    structlog.get_logger("flowgate").info(
        "listening", host=server.host, port=server.port, store=config.store.split("://")[0],
        tls=[f"{t.name}:{t.fingerprint}" for t in tls] or None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):  # (a supervisor's reload calls reload_tls in each worker)
        loop.add_signal_handler(signal.SIGHUP, reload_tls, tls)
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
