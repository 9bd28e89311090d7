"""Job records: what happened to each admitted run, so the ``flow-job-id`` header is useful.

The record is the run's ledger entry, written once at settlement (no extra write per run); read
with ``GET /api/v1/jobs/{jobId}`` and a key holding Execute for the flow's owner. Another owner's
job answers 404, exactly like a job that does not exist.
"""

from __future__ import annotations

from aiohttp import web
from orjson import dumps

from ..context import GATEWAY
from ..errors import BadRequest, GatewayError, NotFound, Unauthorized, problem_response, problem_type
from ..logging import bind as bind_log
from ..policies.api_key import identify, require

RECORD_FIELDS = ("job_id", "backend_job_id", "flow", "env", "dialect", "status", "outcome", "reason", "input_tokens",
                 "output_tokens", "credits", "started_at", "ended_at", "duration_s")


async def get_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        header, query = request.headers.get("x-api-key"), request.query.get("api_key")
        if header is not None and query is not None:
            raise BadRequest("send the API key in the api_key query parameter or the x-api-key header, not both")
        secret = header if header is not None else query
        if not secret:
            raise Unauthorized("an API key with the Execute policy is required")
        key = await identify(gw.keys, secret)
        bind_log(key_id=key.id)  # on the access line, a 403's too
        require(key, "Execute")
        entry = await gw.store.ledger_entry(key.owner, request.match_info["jobId"])
        if entry is None:  # unknown, or another owner's: the same answer
            raise NotFound("job not found")
        record = {name: entry.get(name) for name in RECORD_FIELDS}
    except GatewayError as err:
        return problem_response(err.status, err.title, err.detail, err.kind, type_uri=problem_type(err.status),
                                headers=err.headers)
    return web.Response(body=dumps(record), content_type="application/json", headers={"Cache-Control": "no-store"})
