"""Serving: the gateway's app on its listeners (and the metrics listener), until SIGINT/SIGTERM,
taking a new config on SIGHUP (:mod:`proxy.front.reload`).

A listener with ``tls`` set speaks HTTPS (:mod:`proxy.front.tls`); SIGHUP re-reads every
listener's certificate files through :func:`proxy.front.tls.reload_tls`.

``flowgate serve`` and ``flowgate demo`` both run it: the CLI parses arguments and loads the config,
and imports this module only to serve (its other commands stay light); the demo starts its backend
beside it. With ``server.workers`` above 1, each worker the supervisor
(:mod:`proxy.front.supervisor`) starts runs it on the listeners the supervisor bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config


class CannotListen(OSError):
    """A listener could not be opened; ``str()`` is one line that says where and why."""

    def __init__(self, exc: OSError, host: str, port: int, what: str = "the gateway") -> None:
        super().__init__(exc.errno, exc.strerror)
        self.host, self.port, self.what = host, port, what
        if exc.errno == errno.EADDRINUSE:
            self.why = "the address is already in use (another process listens there: stop it or pick another port)"
        elif exc.errno == errno.EACCES:
            self.why = "permission denied (ports below 1024 need privileges: pick a port above 1023)"
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            self.why = "no such address on this machine (check server.host)"
        else:
            self.why = exc.strerror or str(exc)

    def __str__(self) -> str:
        return f"flowgate: {self.what} cannot listen on {self.host}:{self.port}: {self.why}"


async def listen(site, host: str, port: int, what: str = "the gateway") -> None:
    """``site.start()``, its OSError turned into :class:`CannotListen`."""
    try:
        await site.start()
    except OSError as exc:
        raise CannotListen(exc, host, port, what) from None


class EarlyHup:
    """SIGHUP before the server's own handler is in place (the pid file is written first, and a
    reload may be sent the moment it appears): noted, to be taken once the server serves, instead
    of SIGHUP's default action, which ends the process."""

    def __init__(self) -> None:
        self.seen = False
        with contextlib.suppress(AttributeError, ValueError):  # no SIGHUP here, or not the main thread
            signal.signal(signal.SIGHUP, self._note)

    def _note(self, signum: int, frame: object) -> None:
        self.seen = True


def install_uvloop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve_forever(config: Config, *, ready: asyncio.Future | None = None,
                        listeners: list[socket.socket] | None = None,
                        reload_source: Callable[[Config], Config | None] | None = None,
                        worker: int | None = None, early_hup: EarlyHup | None = None) -> None:
    """Serve until SIGINT/SIGTERM; open streams get ``server.shutdown_timeout_s`` to finish.

    ``listeners``: sockets already bound and listening (a worker's, from its supervisor: the main
    one, then the metrics one when ``server.metrics_port`` is set, then the admin one when
    ``server.admin_port`` is); else this binds its own.
    ``reload_source``: on SIGHUP, what to swap to (given the config in force; None = keep it).
    ``early_hup``: a SIGHUP that came while this was starting is taken once it serves.
    """
    from aiohttp import web

    from ..api.ops import metrics_view
    from ..app import create_admin_app, create_app
    from ..context import GATEWAY
    from . import FRONT_ROUTES, GatewayRunner
    from .reload import apply
    from .tls import Site, TlsListener, reload_tls

    server = config.server
    tls = [TlsListener("main", server.tls)] if server.tls else []
    bound = iter(listeners or ())  # a worker's: main, then metrics and admin where configured

    def site(runner: web.BaseRunner, host: str, port: int, listener: TlsListener | None, **kwargs) -> Site:
        """A listener, TLS or plain, on host:port or on the next socket a supervisor bound. (An admin
        listener's TLS: a ``TlsListener("admin", server.admin_tls)`` added to ``tls`` for SIGHUP.)"""
        return Site(runner, host, port, tls=listener, handshake_timeout_s=server.client_head_timeout_s,
                    shutdown_timeout_s=server.client_write_timeout_s, sock=next(bound, None), **kwargs)

    app = create_app(config)
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.server.shutdown_timeout_s,
                           keepalive_timeout=config.server.client_keepalive_timeout_s)
    await runner.setup()
    try:
        await listen(site(runner, server.host, server.port, tls[0] if tls else None, backlog=server.backlog,
                          reuse_address=True), server.host, server.port)
    except CannotListen:
        await runner.cleanup()
        raise
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
        runners.append(mrunner)
        try:
            await listen(site(mrunner, server.host, server.metrics_port, metrics_tls), server.host,
                         server.metrics_port, "the metrics listener")
        except CannotListen:
            for r in reversed(runners):
                await r.cleanup()
            raise
    if config.server.admin_port is not None:
        arunner = GatewayRunner(create_admin_app(app), access_log=None,
                                keepalive_timeout=config.server.client_keepalive_timeout_s)
        await arunner.setup()
        runners.append(arunner)
        admin_host = config.server.admin_host or config.server.host
        try:
            await listen(site(arunner, admin_host, server.admin_port, None), admin_host, server.admin_port,
                         "the admin listener")
        except CannotListen:
            for r in reversed(runners):
                await r.cleanup()
            raise
    import structlog

    log = structlog.get_logger("flowgate")
    if worker is None:
        log.info("listening", host=server.host, port=server.port, store=config.store.split("://")[0],
                 tls=[f"{t.name}:{t.fingerprint}" for t in tls] or None)
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
            new = None
            try:
                new = reload_source(app[GATEWAY].config) if reload_source is not None else None
                if new is not None:
                    await apply(app[GATEWAY], new)
                    log.info("config_swapped", worker=worker, generation=app[GATEWAY].generation)
            except Exception:  # the config in force stays; the server goes on
                log.exception("reload_failed", worker=worker)
            if new is not None or reload_source is None:  # (a refused config file changes nothing: nor
                # do its certificates, as with workers, whose supervisor then signals none of them)
                reload_tls(tls)  # the certificate files, read and checked again (a bad one: the old one kept)

    tasks: set[asyncio.Task] = set()

    def on_hup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    if worker is not None or (early_hup is not None and early_hup.seen):
        on_hup()  # a reload asked for (or handed over by the supervisor) while this was starting
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
