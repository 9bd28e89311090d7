"""Profitbase's flow API: streamed JSON array out, RFC 9457 problem+json errors.

``POST {prefix}api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run-streaming``
(alias ``.../stream``) and ``.../run`` (non-streaming). The key comes in ``?api_key=`` OR the
``x-api-key`` header, never both. The body (JSON or binary) is passed to the backend as is.
"""

from __future__ import annotations

from aiohttp import web
from orjson import dumps

from ..errors import BadRequest, GatewayError, Unauthorized
from ..run import Run
from . import Dialect

# ASP.NET Core's default problem types, which Profitbase's .NET clients already know.
_TYPES = {
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


class ProfitbaseDialect(Dialect):
    name = "profitbase"
    output = "json-array"

    async def parse(self, request: web.Request, route: str) -> Run:
        in_query = "api_key" in request.query
        in_header = "x-api-key" in request.headers
        if in_query and in_header:
            raise BadRequest("send the API key in the api_key query parameter or the x-api-key header, not both")
        if not in_query and not in_header:
            raise Unauthorized("an API key with the Execute policy is required (api_key or x-api-key)")
        env = self.parse_env(request)
        mi = request.match_info
        return Run(
            request=request,
            dialect=self.name,
            route=route,
            flow_ref=mi["flowId"],
            tenant=mi["tenantId"],
            workspace=mi["workspaceId"],
            env=env,
            stream=route != "run",
            body=b"",  # read by the handler once the run is admitted
            credential=request.query["api_key"] if in_query else request.headers["x-api-key"],
        )

    def error_body(self, err: GatewayError, status: int) -> tuple[bytes, str]:
        problem = {
            "type": _TYPES.get(status, "about:blank"),
            "title": err.title,
            "status": status,
            "detail": err.detail,
            "code": err.kind,
        }
        return dumps(problem), "application/problem+json"
