"""Operations routes: liveness, readiness (the store reachable), Prometheus metrics, and the CORS
preflight of the browser route."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..context import GATEWAY
from ..errors import StoreUnavailable
from .cors import preflight


async def preflight_view(request: web.Request, config: Config) -> web.Response:
    return preflight(config.cors, request)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[GATEWAY].store.ping()
    except StoreUnavailable:
        return web.json_response({"status": "unavailable", "store": "unreachable"}, status=503)
    return web.json_response({"status": "ok", "store": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    resp = web.Response(body=generate_latest())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp
