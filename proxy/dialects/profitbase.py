"""Profitbase's flow API: streamed JSON array out, RFC 9457 problem+json errors.

``POST {prefix}api/v1/tenants/{tenantId}/workspaces/{workspaceId}/flows/{flowId}/run-streaming``
(alias ``.../stream``) and ``.../run`` (non-streaming). The key comes in ``?api_key=`` OR the
``x-api-key`` header, never both. The body (JSON or binary) is passed to the backend as is.
"""

from __future__ import annotations

from aiohttp import web

from ..errors import PROBLEM_JSON, BadRequest, GatewayError, Unauthorized, problem_body, problem_type
from ..run import Run
from .base import Dialect


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
        mi = request.match_info
        return self.new_run(request, route, mi["flowId"], stream=route != "run",
                            credential=request.query["api_key"] if in_query else request.headers["x-api-key"],
                            tenant=mi["tenantId"], workspace=mi["workspaceId"])

    def error_body(self, err: GatewayError, status: int) -> tuple[bytes, str]:
        """problem+json with ASP.NET Core's default problem types."""
        return problem_body(status, err.title, err.detail, err.kind, problem_type(status)), PROBLEM_JSON
