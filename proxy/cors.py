"""CORS for the browser-facing stream route (the token route is for servers and has none)."""

from __future__ import annotations

from aiohttp import web

from .config import CorsConfig

EXPOSED = "flow-job-id, x-ratelimit-limit, x-ratelimit-remaining, retry-after"


def allow_origin(cors: CorsConfig, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin``, or None when it is not allowed."""
    if origin is None:
        return None
    if "*" in cors.allow_origins:
        return "*"
    return origin if origin in cors.allow_origins else None


def cors_headers(cors: CorsConfig, request: web.Request) -> dict[str, str]:
    allowed = allow_origin(cors, request.headers.get("Origin"))
    if allowed is None:
        return {}
    headers = {"Access-Control-Allow-Origin": allowed, "Access-Control-Expose-Headers": EXPOSED}
    if allowed != "*":
        headers["Vary"] = "Origin"
    return headers


def preflight(cors: CorsConfig, request: web.Request) -> web.Response:
    """Answer an OPTIONS preflight: 204 with the grant for an allowed origin, 403 without it."""
    base = cors_headers(cors, request)
    if not base or request.headers.get("Access-Control-Request-Method", "POST").upper() not in ("POST",):
        return web.Response(status=403, headers={"Vary": "Origin"})
    requested = request.headers.get("Access-Control-Request-Headers")
    base.update({
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": requested or "content-type",
        "Access-Control-Max-Age": str(cors.max_age_s),
    })
    base.pop("Access-Control-Expose-Headers", None)
    return web.Response(status=204, headers=base)
