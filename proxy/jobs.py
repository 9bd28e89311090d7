"""Job records: what happened to each admitted run, so the ``flow-job-id`` header is useful.

Written once when a run ends (after settlement) and kept ``JOB_TTL_S``; read with
``GET /api/v1/jobs/{jobId}`` and a key holding Execute for the flow's owner. Another owner's job
answers 404, exactly like a job that does not exist.
"""

from __future__ import annotations

import time

from aiohttp import web
from orjson import dumps

from .context import GATEWAY
from .errors import BadRequest, GatewayError, NotFound, StoreUnavailable, Unauthorized
from .policies.api_key import authenticate
from .run import Run

JOB_TTL_S = 7 * 86400
_PROBLEM_TYPES = {400: "rfc9110#section-15.5.1", 401: "rfc9110#section-15.5.2", 403: "rfc9110#section-15.5.4",
                  404: "rfc9110#section-15.5.5", 503: "rfc9110#section-15.6.4"}


def job_record(run: Run) -> dict:
    ended = time.time()
    return {
        "job_id": run.job_id,
        "flow": run.flow_id,
        "owner": run.owner,
        "env": run.env.value,
        "dialect": run.dialect,
        "status": run.status,
        "outcome": run.outcome,
        "reason": run.reason,
        "input_tokens": run.meter.input_tokens,
        "output_tokens": run.meter.output_tokens,
        "credits": run.extra.get("credits_charged", 0),
        "started_at": run.started_at,
        "ended_at": ended,
        "duration_s": round(time.monotonic() - run.started_mono, 6),
    }


async def record_job(gw, run: Run) -> None:
    try:
        await gw.store.put_job(run.job_id, job_record(run), JOB_TTL_S)
    except StoreUnavailable:
        pass  # the ledger still has the settlement; the record is a convenience


def _problem(err: GatewayError) -> web.Response:
    body = {"type": "https://tools.ietf.org/html/" + _PROBLEM_TYPES.get(err.status, "rfc9110#section-15.6.1"),
            "title": err.title, "status": err.status, "detail": err.detail, "code": err.kind}
    return web.Response(status=err.status, body=dumps(body), content_type="application/problem+json",
                        headers=err.headers)


async def get_job(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        header, query = request.headers.get("x-api-key"), request.query.get("api_key")
        if header is not None and query is not None:
            raise BadRequest("send the API key in the api_key query parameter or the x-api-key header, not both")
        secret = header if header is not None else query
        if not secret:
            raise Unauthorized("an API key with the Execute policy is required")
        key = authenticate(gw.config, secret)
        record = await gw.store.get_job(request.match_info["jobId"])
        if record is None or record.get("owner") != key.owner:
            raise NotFound("job not found")
    except GatewayError as err:
        return _problem(err)
    return web.Response(body=dumps(record), content_type="application/json", headers={"Cache-Control": "no-store"})
