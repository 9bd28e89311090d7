"""The workflow API (ManagePrompt-style): plain-text streams for the Vercel AI SDK.

``GET {prefix}api/v1/token?ttl=N`` mints a single-use stream token (key as ``Authorization:
Bearer`` or ``x-api-key``); ``POST {prefix}api/v1/run/{workflowId}/stream?token=T`` spends it on one
run streamed as ``text/plain`` (the AI SDK's text stream), or with ``&protocol=ui`` as the AI SDK
UI message stream (:mod:`proxy.protocols.ui`, what ``useChat``'s default transport reads);
``POST {prefix}api/v1/run/{workflowId}`` runs with a key and answers ``{"success": true, "result":
"..."}``. Errors are ``{"success": false, "error", "code"}``.
"""

from __future__ import annotations

from aiohttp import web
from orjson import dumps

from ..errors import BadRequest, GatewayError, Unauthorized
from ..run import BACKEND_ERROR, Run
from .base import Collected, Dialect

# kind -> (status, code) in this API's vocabulary. A key without scope answers 401 unauthorized,
# as ManagePrompt answers an owner mismatch.
_CODES = {
    "bad_request": (400, "bad_request"),
    "unauthorized": (401, "unauthorized"),
    "forbidden": (401, "unauthorized"),
    "invalid_token": (401, "invalid_token"),
    "no_credits": (402, "no_credits"),
    "not_found": (404, "workflow_not_found"),
    "method_not_allowed": (405, "method_not_allowed"),
    "payload_too_large": (413, "payload_too_large"),
    "rate_limited": (429, "rate_limited"),
    "run_failed": (500, "workflow_run_failed"),
    "internal": (500, "workflow_run_failed"),
    "backend_unavailable": (502, "backend_unavailable"),
    "store_unavailable": (503, "service_unavailable"),
    "backend_timeout": (504, "backend_timeout"),
}

TOKEN_PREFIX = "pub_tok_"

# ?protocol= on the stream route -> output format (proxy.protocols.ENCODERS)
STREAM_PROTOCOLS = {"text": "text", "ui": "ui"}


def key_from_headers(request: web.Request, policy: str = "Execute") -> str:
    """The API key from ``Authorization: Bearer`` or ``x-api-key`` (exactly one of them)."""
    auth = request.headers.get("Authorization")
    header_key = request.headers.get("x-api-key")
    bearer = None
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("use Authorization: Bearer <api key> or the x-api-key header")
        bearer = value.strip()
    if bearer is not None and header_key is not None:
        raise BadRequest("send the API key as a Bearer token or in x-api-key, not both")
    key = bearer if bearer is not None else header_key
    if not key:
        raise Unauthorized(f"an API key with the {policy} policy is required")
    return key


class WorkflowDialect(Dialect):
    name = "workflow"
    output = "text"
    cors_routes = frozenset({"stream", "preflight"})
    maps_chat = True  # useChat's {id, messages} onto a Langflow backend's input_value

    async def parse(self, request: web.Request, route: str) -> Run:
        if route == "stream":
            token = request.query.get("token")
            if not token:
                raise Unauthorized("a stream token is required: ?token=pub_tok_...")
            credential, kind = token, "token"
        else:
            credential, kind = key_from_headers(request), "key"
        output = self.parse_protocol(request, route)
        return self.new_run(request, route, request.match_info["workflowId"], stream=route == "stream",
                            credential=credential, credential_kind=kind, output=output)

    @staticmethod
    def parse_protocol(request: web.Request, route: str) -> str | None:
        """The stream's format from ``?protocol=`` (``text``, the default, or ``ui``)."""
        raw = request.query.get("protocol")
        if raw is None:
            return None
        if route != "stream":
            raise BadRequest("protocol applies to the stream route (/api/v1/run/{id}/stream) only")
        output = STREAM_PROTOCOLS.get(raw)
        if output is None:
            raise BadRequest(f"protocol must be one of {', '.join(STREAM_PROTOCOLS)}")
        return output

    def error_status(self, err: GatewayError) -> int:
        return _CODES.get(err.kind, (err.status, err.kind))[0]

    def error_body(self, err: GatewayError, status: int) -> tuple[bytes, str]:
        code = _CODES.get(err.kind, (status, err.kind))[1]
        return dumps({"success": False, "error": err.detail, "code": code}), "application/json"

    def stream_error(self, outcome: str, message: str) -> str:
        """A backend's own error text is not shown to a public client (a flow's error may quote its
        provider's answer, keys and internals included), as the non-streaming route does not show it;
        the gateway's own reasons (the cap, credits) are."""
        return "the workflow run failed" if outcome == BACKEND_ERROR else message

    def render_result(self, run: Run, collected: Collected) -> web.Response:
        return web.Response(body=dumps({"success": True, "result": collected.text}), content_type="application/json")
