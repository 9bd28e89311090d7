"""Typed errors that policies and the forwarder raise and that each dialect renders.

Raise one of these before the response is prepared; the dialect maps ``kind`` to its own status
code and body style (problem+json, ``{"success": false, ...}``, Langflow's ``{"detail": ...}``).
``detail`` is shown to the client, so it must never contain a key, token or upstream secret.
"""

from __future__ import annotations


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


class RequestTimeout(GatewayError):
    """The client stopped sending the request body (the front's body timer)."""

    status, kind, title = 408, "request_timeout", "Request Timeout"
