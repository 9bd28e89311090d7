"""The terminal step: send the run's request to its backend over the app's one upstream pool.

Connection problems become typed errors the dialect renders: 502 for a backend refused, closed,
garbled or over a limit (its head's size or header count, or for a non-streaming run a body
larger than ``server.max_buffered_response_bytes``), 504 for no connection within
``connect_timeout_s`` or no response head within ``head_timeout_s``, 500 for a backend that
answered with a failure status. The response body is left unread for the pump, which attaches to
the returned connection; :func:`body_failure` says what a body that broke off means for a
non-streaming run.
"""

from __future__ import annotations

import time

from .. import metrics as m
from ..errors import BackendTimeout, BackendUnavailable, GatewayError, RunFailed
from ..http1.headers import upstream_headers
from ..run import Run
from . import MALFORMED, TIMEOUT, TOO_LARGE, Connection, UpstreamError, UpstreamPool, UpstreamTimeout

TOO_LARGE_MESSAGE = "the backend's response is larger than the gateway buffers"
BACKEND_ERROR_KEY = "backend_error"  # run.extra: what went wrong with the backend, for the access line


def describe(exc: BaseException) -> str:
    """An upstream failure for the log (operators only, never a client): its class and message,
    cut to 200 characters. The backend's URL and headers are not in it (its name is logged beside)."""
    text = str(exc)
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:200]


async def open_upstream(pool: UpstreamPool, run: Run) -> Connection:
    backend, target = run.backend, run.target
    assert backend is not None and target is not None
    req = run.request
    headers = upstream_headers(
        req.headers, backend.headers, peer=req.remote, scheme=req.scheme, host=req.headers.get("Host")
    )
    if run.body_type is not None:  # a body the gateway rewrote (a chat request mapped for the backend)
        headers["Content-Type"] = run.body_type
    elif run.body and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"
    run.forwarded_mono = time.monotonic()
    failures = m.BACKEND_FAILURES
    try:
        conn = await pool.request(pool.endpoint(backend.url + target.path), req.method, headers, run.body,
                                  pool.limits(backend), backend.connect_timeout_s)
    except (TimeoutError, UpstreamTimeout) as exc:
        m.child(failures, target.backend, "timeout").inc()
        run.reason = "backend_timeout"
        run.extra[BACKEND_ERROR_KEY] = describe(exc) or "timed out"
        raise BackendTimeout("the backend did not answer in time") from None
    except (UpstreamError, OSError) as exc:
        m.child(failures, target.backend, "connect").inc()
        run.reason = "backend_unavailable"
        run.extra[BACKEND_ERROR_KEY] = describe(exc)
        raise BackendUnavailable("the backend is unavailable") from None
    if conn.status >= 300:
        status = conn.status
        conn.close()
        m.child(failures, target.backend, "status").inc()
        run.extra[BACKEND_ERROR_KEY] = f"answered {status}"
        run.reason = f"backend_status_{status // 100}xx"
        if status in (502, 503, 504):
            raise BackendUnavailable(f"the backend is unavailable ({status})")
        raise RunFailed(f"the workflow run failed (backend answered {status})")
    cap = pool.max_buffered_response_bytes
    if not run.stream and cap is not None:
        length = conn.headers.get("content-length")
        if length is not None and int(length) > cap:  # llhttp let only digits through
            conn.close()
            m.child(failures, target.backend, "broken").inc()  # as a body over the cap, found mid-body
            run.reason = "backend_too_large"
            run.extra[BACKEND_ERROR_KEY] = f"content-length {length} over server.max_buffered_response_bytes"
            raise BackendUnavailable(TOO_LARGE_MESSAGE)
        conn.body_limit = cap  # the body is buffered: at most this much of it is read
    return conn


def body_failure(conn: Connection | None) -> GatewayError | None:
    """For a non-streaming run whose body broke off: the error to answer when the gateway itself
    ended it (a limit, a timeout, a garbled body), else None (the run's own failure)."""
    kind = conn.kind if conn is not None else None
    if kind == TOO_LARGE:
        return BackendUnavailable(TOO_LARGE_MESSAGE)
    if kind == TIMEOUT:
        return BackendTimeout("the backend stopped sending")
    if kind == MALFORMED:
        return BackendUnavailable("the backend sent a malformed response")
    return None
