"""Builds the aiohttp application: dialect routes at their prefixes, operations routes, resources.

Resources live in ``cleanup_ctx`` (the store, the one upstream connection pool), app state behind
``web.AppKey``. ``create_app`` takes an already-validated :class:`~proxy.config.Config`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial

import structlog
from aiohttp import web

from . import metrics as m
from .api.admin import add_admin_routes
from .api.jobs import get_job
from .api.openapi import add_openapi_route
from .api.ops import healthz, metrics_view, preflight_view, readyz
from .api.runs import handle_run
from .api.tokens import mint_token
from .balances import Balances
from .config import Config
from .context import GATEWAY, Gateway
from .dialects import ROUTES, defer_continue, dialect_classes
from .errors import StoreUnavailable, problem_response
from .front import FRONT_ROUTES
from .front.protocol import MAX_HEAD_BYTES
from .logging import make_access_middleware
from .policies import build_chains
from .policies.checkpoints import Checkpoints
from .policies.credits import sweep_expired_holds
from .policies.hold_size import HoldSizer
from .policies.keys import KeyRing
from .policies.keys import watch as watch_keys
from .store import open_store
from .upstream import UpstreamPool


@web.middleware
async def unknown_routes(request: web.Request, handler):
    """Junk paths and wrong methods get a problem+json body, never aiohttp's HTML/text page."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return problem_response(exc.status, exc.reason, exc.reason,
                                "not_found" if exc.status == 404 else "method_not_allowed", headers=headers)


unknown_routes.front_skips = True  # type: ignore[attr-defined] # aiohttp's router raises these, never a front route


def create_app(config: Config) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes + 1,
        middlewares=[make_access_middleware(config.server.access_log), unknown_routes],
        # as long as the front's own limit on a whole head (32 KiB): nothing it hands over is refused here
        handler_args={"max_line_size": MAX_HEAD_BYTES, "max_field_size": MAX_HEAD_BYTES},
    )
    gw = Gateway(config=config, store=open_store(config.store))
    gw.hold_sizer = HoldSizer(gw.store, config.limits)
    gw.balances = Balances(gw.store, {name: acct.initial_credits for name, acct in config.accounts.items()})
    gw.keys = KeyRing(config, gw.store)
    gw.checkpoints = Checkpoints(gw.store)
    gw.chains = build_chains(config, gw.store, gw.keys, gw.hold_sizer, gw.balances, gw.checkpoints)
    app[GATEWAY] = gw

    front_routes: list[web.AbstractRoute] = []
    for name, mount in config.dialects.items():
        dialect = dialect_classes()[name](config.server.max_body_bytes, config.server.client_body_timeout_s)
        for method, path, route in ROUTES[name]:
            if route == "token":
                handler = partial(mint_token, dialect=dialect)
            elif route == "preflight":
                handler = preflight_view
            else:
                handler = partial(handle_run, dialect=dialect, route=route)
            front_routes.append(app.router.add_route(method, mount.prefix + path, handler, name=f"{name}:{route}",
                                                     expect_handler=defer_continue))
    app[FRONT_ROUTES] = front_routes  # the public API: served by flowgate's own front protocol

    app.router.add_get("/api/v1/jobs/{jobId}", get_job, name="jobs:get")
    if config.server.admin_port is None:
        add_admin_routes(app)
    app.router.add_get("/healthz", healthz, name="ops:healthz")
    app.router.add_get("/readyz", readyz, name="ops:readyz")
    app.router.add_get("/metrics", metrics_view, name="ops:metrics")
    add_openapi_route(app)
    m.init_series([f.id for f in config.flows], list(config.dialects), list(config.backends))
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_sweeper_ctx)
    app.cleanup_ctx.append(_balances_ctx)
    app.cleanup_ctx.append(_keys_ctx)
    return app


async def _keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keeps this process's copy of the admin API's keys current (see :mod:`proxy.policies.keys`)."""
    gw = app[GATEWAY]
    task = asyncio.create_task(watch_keys(lambda: gw.keys))  # the ring in force, a reloaded one too
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_admin_app(main: web.Application) -> web.Application:
    """The admin API alone (``server.admin_port``), on the main app's gateway (store, keys), with its
    own /openapi.json; the main app's resources (store, key watcher) are started by the main app."""
    config = main[GATEWAY].config
    app = web.Application(client_max_size=config.server.max_body_bytes + 1,
                          middlewares=[make_access_middleware(config.server.access_log), unknown_routes])
    app[GATEWAY] = main[GATEWAY]
    app[FRONT_ROUTES] = []
    add_admin_routes(app)
    add_openapi_route(app)
    return app


async def _balances_ctx(app: web.Application) -> AsyncIterator[None]:
    async with app[GATEWAY].balances.running():
        yield


SWEEP_EVERY_S = 5.0


async def _sweeper_ctx(app: web.Application) -> AsyncIterator[None]:
    """Settle credit holds left by replicas that died mid-run (idempotent across replicas)."""
    gw = app[GATEWAY]

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            try:
                await sweep_expired_holds(gw)
            except StoreUnavailable:
                pass  # retried on the next round
            except Exception:
                structlog.get_logger("flowgate").exception("hold_sweep_failed")

    task = asyncio.create_task(sweep_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


CHECKPOINT_FLUSH_S = 1.5


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    await gw.store.start()
    for account, acct in gw.config.accounts.items():
        try:
            await gw.store.seed_account(account, acct.initial_credits)
        except StoreUnavailable:
            pass  # seeded on a later start; runs fail closed until the store is back
    yield
    if gw.checkpoints is not None:
        with contextlib.suppress(Exception):  # (a failing batch is logged by the batcher)
            # the runs' last counts, before the store goes; bounded: the supervisor kills a worker
            # KILL_GRACE_S after its drain, and the pooled counters are saved after this
            await gw.checkpoints.flush(within=CHECKPOINT_FLUSH_S)
    await gw.store.close()


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    server = gw.config.server
    gw.upstreams = UpstreamPool(max_idle=server.upstream_keepalive, idle_timeout_s=server.upstream_keepalive_timeout_s,
                                max_head_bytes=server.upstream_max_head_bytes, max_headers=server.upstream_max_headers,
                                max_buffered_response_bytes=server.max_buffered_response_bytes)
    yield
    await gw.upstreams.close()
