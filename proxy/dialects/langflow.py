"""Langflow's simplified run API, so Langflow clients can point at flowgate unchanged.

``POST {prefix}api/v1/run/{flowIdOrName}?stream=true|false`` with the key in the ``x-api-key``
header or query parameter (Langflow's rule: the query wins). Streams Langflow events
(``text/event-stream``, one JSON object per event followed by a blank line); non-streaming answers
Langflow's RunResponse JSON. Errors are FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

from aiohttp import web
from orjson import dumps

from ..errors import GatewayError, Unauthorized
from ..protocols.langflow import run_response
from ..run import Run
from .base import Collected, Dialect

_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


class StreamParamError(GatewayError):
    """FastAPI's 422 for a query value that is not a boolean."""

    status, kind, title = 422, "validation_error", "Unprocessable Entity"

    def __init__(self, value: str) -> None:
        super().__init__("stream must be a boolean")
        self.value = value


class LangflowDialect(Dialect):
    name = "langflow"
    output = "langflow"

    async def parse(self, request: web.Request, route: str) -> Run:
        raw_stream = request.query.get("stream", "false")
        if raw_stream.lower() in _TRUE:
            stream = True
        elif raw_stream.lower() in _FALSE:
            stream = False
        else:
            raise StreamParamError(raw_stream)
        key = request.query.get("x-api-key") or request.headers.get("x-api-key")
        if not key:
            raise Unauthorized("An API key must be passed as query or header")
        return self.new_run(request, route, request.match_info["flowIdOrName"], stream=stream, credential=key,
                            by_name=True)

    def error_status(self, err: GatewayError) -> int:
        # Langflow answers 403 for a missing or invalid key, and 404 for a flow the key's user
        # cannot see (so a scope mismatch does not reveal that the flow exists).
        if err.kind == "unauthorized":
            return 403
        if err.kind == "forbidden":
            return 404
        return err.status

    def error_body(self, err: GatewayError, status: int) -> tuple[bytes, str]:
        if isinstance(err, StreamParamError):
            detail: object = [{
                "type": "bool_parsing",
                "loc": ["query", "stream"],
                "msg": "Input should be a valid boolean, unable to interpret input",
                "input": err.value,
            }]
        elif err.kind == "unauthorized" and err.detail != "An API key must be passed as query or header":
            detail = "Invalid or missing API key"
        elif err.kind in ("forbidden", "not_found"):
            detail = "Flow not found"
        else:
            detail = err.detail
        return dumps({"detail": detail}), "application/json"

    def render_result(self, run: Run, collected: Collected) -> web.Response:
        result = collected.result if collected.result is not None else run_response(collected.text, run.job_id)
        return web.Response(body=dumps(result), content_type="application/json")
