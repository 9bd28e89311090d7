"""The terminal step: open the backend request on the app's one shared ClientSession.

Connection problems become typed errors the dialect renders (502 refused, 504 no headers within
``connect_timeout_s``, 500 for a backend that answered with a failure status). The response body
is left unread for the pump.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from . import metrics as m
from .errors import BackendTimeout, BackendUnavailable, RunFailed
from .headers import upstream_headers
from .run import Run


async def open_upstream(session: aiohttp.ClientSession, run: Run) -> aiohttp.ClientResponse:
    backend, target = run.backend, run.target
    assert backend is not None and target is not None
    req = run.request
    headers = upstream_headers(
        req.headers, backend.headers, peer=req.remote, scheme=req.scheme, host=req.headers.get("Host")
    )
    if run.body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"
    run.forwarded_mono = time.monotonic()
    failures = m.BACKEND_FAILURES
    try:
        async with asyncio.timeout(backend.connect_timeout_s):
            resp = await session.request(
                req.method, backend.url + target.path, data=run.body, headers=headers, allow_redirects=False
            )
    except TimeoutError:
        m.child(failures, target.backend, "timeout").inc()
        run.reason = "backend_timeout"
        raise BackendTimeout("the backend did not answer in time") from None
    except (aiohttp.ClientConnectionError, OSError):
        m.child(failures, target.backend, "connect").inc()
        run.reason = "backend_unavailable"
        raise BackendUnavailable("the backend is unavailable") from None
    if resp.status >= 300:
        status = resp.status
        resp.close()
        m.child(failures, target.backend, "status").inc()
        run.reason = f"backend_status_{status // 100}xx"
        if status in (502, 503, 504):
            raise BackendUnavailable(f"the backend is unavailable ({status})")
        raise RunFailed(f"the workflow run failed (backend answered {status})")
    return resp
