"""Typed errors that policies and the forwarder raise and that each dialect renders.

Raise one of these before the response is prepared; the dialect maps ``kind`` to its own status
code and body style (problem+json, ``{"success": false, ...}``, Langflow's ``{"detail": ...}``).
``detail`` is shown to the client, so it must never contain a key, token or upstream secret.

Every problem+json body (RFC 9457) the gateway sends is made by :func:`problem_body` (the
profitbase dialect, the jobs route, unknown routes, the front's fixed answers).
"""

from __future__ import annotations

from aiohttp import web
from orjson import dumps

PROBLEM_JSON = "application/problem+json"

# ASP.NET Core's default problem types, which Profitbase's .NET clients already know.
PROBLEM_TYPES = {
    400: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
    401: "https://tools.ietf.org/html/rfc9110#section-15.5.2",
    402: "https://tools.ietf.org/html/rfc9110#section-15.5.3",
    403: "https://tools.ietf.org/html/rfc9110#section-15.5.4",
    404: "https://tools.ietf.org/html/rfc9110#section-15.5.5",
    405: "https://tools.ietf.org/html/rfc9110#section-15.5.6",
    413: "https://tools.ietf.org/html/rfc9110#section-15.5.14",
    429: "https://tools.ietf.org/html/rfc6585#section-4",
    500: "https://tools.ietf.org/html/rfc9110#section-15.6.1",
    502: "https://tools.ietf.org/html/rfc9110#section-15.6.3",
    503: "https://tools.ietf.org/html/rfc9110#section-15.6.4",
    504: "https://tools.ietf.org/html/rfc9110#section-15.6.5",
}


def problem_type(status: int) -> str:
    """The problem type of :data:`PROBLEM_TYPES` for ``status``, else ``about:blank``."""
    return PROBLEM_TYPES.get(status, "about:blank")


def problem_body(status: int, title: str, detail: str, code: str, type_uri: str = "about:blank") -> bytes:
    """An RFC 9457 problem+json body: ``{type, title, status, detail, code}``, in that order."""
    return dumps({"type": type_uri, "title": title, "status": status, "detail": detail, "code": code})


def problem_response(status: int, title: str, detail: str, code: str, *, type_uri: str = "about:blank",
                     headers: dict[str, str] | None = None) -> web.Response:
    """A whole problem+json response (see :func:`problem_body`)."""
    return web.Response(status=status, body=problem_body(status, title, detail, code, type_uri),
                        content_type=PROBLEM_JSON, headers=headers)


class GatewayError(Exception):
    """Base class. ``status`` is the canonical HTTP status; dialects may override per ``kind``."""

    status: int = 500
    kind: str = "internal"
    title: str = "Internal Server Error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or self.title
        self.headers = headers or {}
        super().__init__(self.detail)


class BadRequest(GatewayError):
    status, kind, title = 400, "bad_request", "Bad Request"


class Unauthorized(GatewayError):
    """No credential, or one that matches no key."""

    status, kind, title = 401, "unauthorized", "Unauthorized"


class InvalidToken(GatewayError):
    """A stream token that is malformed, unknown, expired, used, or bound elsewhere."""

    status, kind, title = 401, "invalid_token", "Unauthorized"


class Forbidden(GatewayError):
    """A known key without the policy or scope for this flow/env."""

    status, kind, title = 403, "forbidden", "Forbidden"


class NoCredits(GatewayError):
    status, kind, title = 402, "no_credits", "Payment Required"


class NotFound(GatewayError):
    """Unknown or unpublished flow, or no target for the requested env."""

    status, kind, title = 404, "not_found", "Not Found"


class MethodNotAllowed(GatewayError):
    status, kind, title = 405, "method_not_allowed", "Method Not Allowed"


class PayloadTooLarge(GatewayError):
    status, kind, title = 413, "payload_too_large", "Payload Too Large"


class RateLimited(GatewayError):
    status, kind, title = 429, "rate_limited", "Too Many Requests"


class RunFailed(GatewayError):
    """The backend answered, but with a failure (non-2xx status or an error event before output)."""

    status, kind, title = 500, "run_failed", "Workflow Run Failed"


class BackendUnavailable(GatewayError):
    status, kind, title = 502, "backend_unavailable", "Bad Gateway"


class StoreUnavailable(GatewayError):
    """The state store cannot be reached: fail closed."""

    status, kind, title = 503, "store_unavailable", "Service Unavailable"


class BackendTimeout(GatewayError):
    status, kind, title = 504, "backend_timeout", "Gateway Timeout"


# The kinds of the errors that refuse a run before anything reaches a backend: the metrics make a
# rejections series for each (add a new refusal here).
REJECTION_KINDS = tuple(error.kind for error in (BadRequest, Unauthorized, InvalidToken, Forbidden, NoCredits,
                                                 NotFound, PayloadTooLarge, RateLimited, StoreUnavailable))

# Why a stream token was refused (:class:`InvalidToken`; the run's reason is ``token_`` + this):
# malformed, what the store's ``consume_token`` answers when it is not "ok", a token for another
# flow, a minting key gone from the config. The metrics make a series for each.
TOKEN_REFUSALS = ("malformed", "unknown", "expired", "used", "wrong_flow", "key_revoked")


class RequestTimeout(GatewayError):
    """The client stopped sending the request body (the front's body timer)."""

    status, kind, title = 408, "request_timeout", "Request Timeout"
