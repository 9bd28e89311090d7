"""Operations routes: liveness, readiness (the store reachable), Prometheus metrics, and the CORS
preflight of the browser route."""

from __future__ import annotations

from aiohttp import web

from ..context import GATEWAY
from ..errors import StoreUnavailable
from .cors import preflight


async def preflight_view(request: web.Request) -> web.Response:
    return preflight(request.app[GATEWAY].config.cors, request)  # the config in force (a reload may change CORS)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[GATEWAY].store.ping()
    except StoreUnavailable:
        return web.json_response({"status": "unavailable", "store": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "store": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    from ..front.pooled import exposition

    resp = web.Response(body=exposition())  # with workers: all of them, pooled
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
