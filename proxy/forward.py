"""The terminal step: send the run's request to its backend over the app's one upstream pool.

Connection problems become typed errors the dialect renders (502 refused or closed, 504 no headers
within ``connect_timeout_s``, 500 for a backend that answered with a failure status). The response
body is left unread for the pump, which attaches to the returned connection.
"""

from __future__ import annotations

import asyncio
import time

from . import metrics as m
from .errors import BackendTimeout, BackendUnavailable, RunFailed
from .headers import upstream_headers
from .run import Run
from .upstream import Connection, UpstreamError, UpstreamPool


async def open_upstream(pool: UpstreamPool, run: Run) -> Connection:
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
            conn = await pool.request(pool.endpoint(backend.url + target.path), req.method, headers, run.body)
    except TimeoutError:
        m.child(failures, target.backend, "timeout").inc()
        run.reason = "backend_timeout"
        raise BackendTimeout("the backend did not answer in time") from None
    except (UpstreamError, OSError):
        m.child(failures, target.backend, "connect").inc()
        run.reason = "backend_unavailable"
        raise BackendUnavailable("the backend is unavailable") from None
    if conn.status >= 300:
        status = conn.status
        conn.close()
        m.child(failures, target.backend, "status").inc()
        run.reason = f"backend_status_{status // 100}xx"
        if status in (502, 503, 504):
            raise BackendUnavailable(f"the backend is unavailable ({status})")
        raise RunFailed(f"the workflow run failed (backend answered {status})")
    return conn
