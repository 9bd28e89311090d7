"""CORS for the browser-facing stream route (the token route is for servers and has none)."""

from __future__ import annotations

import re

from aiohttp import web

from ..config import CorsConfig

EXPOSED = "flow-job-id, x-ratelimit-limit, x-ratelimit-remaining, retry-after"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
MAX_REQUEST_HEADERS = 64  # names echoed in Access-Control-Allow-Headers at most


def allowed_headers(requested: str | None) -> str | None:
    """The ``Access-Control-Allow-Headers`` value for a preflight's ``Access-Control-Request-Headers``:
    its names when each is an RFC 9110 token (lower-cased, at most :data:`MAX_REQUEST_HEADERS`), else
    None (the preflight is refused). Only validated names are ever echoed into a response head."""
    names = [n.strip() for n in (requested or "").split(",") if n.strip()]
    if not names:  # none asked for (an absent, blank or empty list)
        return "content-type"
    if len(names) > MAX_REQUEST_HEADERS or not all(_TOKEN.fullmatch(n) for n in names):
        return None
    return ", ".join(n.lower() for n in names)


def allow_origin(cors: CorsConfig, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin``, or None when it is not allowed (only a
    configured origin is ever echoed)."""
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
    allowed = allowed_headers(request.headers.get("Access-Control-Request-Headers"))
    if allowed is None:  # a name that is no token (or cannot be sent back): refused, never echoed
        return web.Response(status=403, headers={"Vary": "Origin"})
    base.update({
        "Access-Control-Allow-Methods": "POST, OPTIONS",
        "Access-Control-Allow-Headers": allowed,
        "Access-Control-Max-Age": str(cors.max_age_s),
    })
    base.pop("Access-Control-Expose-Headers", None)
    return web.Response(status=204, headers=base)
