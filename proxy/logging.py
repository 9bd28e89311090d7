"""structlog setup: JSON lines (a console renderer when stderr is a TTY), contextvars per request.

The access middleware starts the request's log fields (method, route; the handler adds job id,
flow, key id, env through :func:`bind`) and writes exactly one access line per request. The fields
are one dict per request in one context variable (what structlog's ``bind_contextvars`` keeps as
a context variable per field, set and cleared field by field: ~10 µs per request, measured), and
the access line, the one line every request writes, is rendered by the same processors without
structlog's dispatch when the output is JSON. Secrets never reach a log
line: routes are logged by their template, never the raw path or query, and :func:`redact` masks
the credential fields if anything tries to log them. aiohttp's and asyncio's stdlib records are
rewritten by :class:`Redacted` (no request line, header, query value or traceback).
"""

from __future__ import annotations

import asyncio
import contextvars
import json as stdjson
import logging
import sys
import time

import orjson
import structlog
from aiohttp import web

from . import metrics as m
from .run import RUN

SECRET_FIELDS = frozenset({"api_key", "token", "x-api-key", "authorization", "credential", "secret"})


def redact(_logger: object, _name: str, event: dict) -> dict:
    for key in SECRET_FIELDS.intersection(event):
        event[key] = "[redacted]"
    return event


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (so redirections and test capture see our lines).

    Inside a running event loop the lines of one loop turn leave in one write: a flush is deferred
    to the end of the turn (like the store's group commit), so a busy gateway makes one syscall per
    turn rather than one per access line. Outside a loop every line is flushed at once."""

    def __init__(self) -> None:
        self._flush_scheduled = False

    def write(self, data: bytes) -> int:
        err = sys.stderr
        buf = getattr(err, "buffer", None)
        if buf is None:
            return err.write(data.decode("utf-8", "replace"))
        return buf.write(data)

    def flush(self) -> None:
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            sys.stderr.flush()
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        sys.stderr.flush()


_second: list = [0, ""]


def iso_timestamp(_logger: object, _name: str, event: dict) -> dict:
    """``timestamp``: ISO 8601 UTC with microseconds, as structlog's TimeStamper(fmt="iso") writes
    it, with the part up to the second formatted once a second rather than on every line."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event["timestamp"] = f"{_second[1]}.{int((now - second) * 1e6):06d}Z"
    return event


PROCESS_FIELDS: dict[str, object] = {}  # on every line of this process: a worker's ``worker`` (its slot)


def process_fields(_logger: object, _name: str, event: dict) -> dict:
    for key, value in PROCESS_FIELDS.items():
        event.setdefault(key, value)
    return event


_REQUEST: contextvars.ContextVar[dict | None] = contextvars.ContextVar("flowgate_request_fields", default=None)


def bind(**fields: object) -> None:
    """Fields on every later line of this request, its access line included (outside a request:
    structlog's context variables)."""
    current = _REQUEST.get()
    if current is None:
        structlog.contextvars.bind_contextvars(**fields)
    else:
        current.update(fields)


def request_fields(_logger: object, _name: str, event: dict) -> dict:
    current = _REQUEST.get()
    if current:
        for key, value in current.items():
            event.setdefault(key, value)
    return event


def dumps(event: dict, default=repr) -> bytes:
    """orjson, or the standard library's json for what orjson refuses even with ``default`` (a lone
    surrogate, an integer over 64 bits): a field never fails the request that logs it."""
    try:
        return orjson.dumps(event, default=default)
    except TypeError:
        return stdjson.dumps(event, default=repr).encode()


_STDERR = _Stderr()
_direct_access: list[bool] = [False]  # JSON lines at info or below: the access line skips structlog's dispatch


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    _direct_access[0] = json and logging.getLevelName(level.upper()) <= logging.INFO
    processors = [
        request_fields,
        structlog.contextvars.merge_contextvars,
        process_fields,
        structlog.processors.add_log_level,
        iso_timestamp,
        redact,
        structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
    ]
    if json:
        processors.append(structlog.processors.JSONRenderer(serializer=dumps))
    else:
        processors += [structlog.dev.ConsoleRenderer(), lambda _l, _n, line: line.encode("utf-8", "backslashreplace")]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.BytesLoggerFactory(_STDERR),
        cache_logger_on_first_use=True,
    )
    # aiohttp's own loggers go through stdlib logging; its access log is off (ours replaces it,
    # and aiohttp's would print the raw query string, secrets included).
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    install_stdlib_redaction()


class Redacted(logging.Filter):
    """Rewrites a stdlib record of aiohttp's (or asyncio's) into one short line without the request.

    aiohttp's server logger quotes a bad request line (its query, keys included) and attaches a
    traceback; its access logger prints the raw query string. Access records are dropped (flowgate
    writes its own access line); every other record keeps its logger, level and the class of its
    exception, and loses its message arguments, exception text and stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("aiohttp.access"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        record.msg = f"{record.name}: {type(exc).__name__ if exc is not None else 'event'} (details redacted)"
        record.args = ()
        record.exc_info = record.exc_text = record.stack_info = None
        return True


REDACTED_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.internal", "aiohttp.websocket",
                    "asyncio")
_filter = Redacted()


def install_stdlib_redaction() -> None:
    """Put :class:`Redacted` on aiohttp's loggers and asyncio's (idempotent)."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


access_log = structlog.get_logger("flowgate.access")


def route_name(request: web.Request) -> str:
    """The matched route's template (bounded, secret-free) rather than the raw path."""
    info = request.match_info
    route = info.route if info is not None else None
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def make_access_middleware(enabled: bool):
    @web.middleware
    async def access(request: web.Request, handler):
        _REQUEST.set({"method": request.method, "route": route_name(request)})
        start = time.perf_counter()
        status = 499  # until proven otherwise: the client went away
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            run = request.get(RUN)
            if run is not None and run.status:
                status = run.status
            name = request.match_info.route.name if request.match_info.route is not None else None
            dialect, _, route = (name or "other:unmatched").partition(":")
            flow = run.flow_id if run is not None and run.flow_id else m.UNKNOWN_FLOW
            m.child(m.REQUESTS, dialect, route or dialect, flow, m.status_class(status)).inc()
            if enabled:
                fields: dict = {"status": status, "duration_s": round(time.perf_counter() - start, 6)}
                if run is not None:
                    fields.update(
                        dialect=run.dialect,
                        key_id=run.key_id,
                        backend=run.target.backend if run.target is not None else None,
                        outcome=run.outcome,
                        reason=run.reason,
                        bytes_in=run.bytes_in,
                        bytes_out=run.bytes_out,
                        input_tokens=run.meter.input_tokens,
                        output_tokens=run.meter.output_tokens,
                    )
                    if "backend_error" in run.extra:  # a 502/504/500: what the backend did (never a secret)
                        fields["backend_error"] = run.extra["backend_error"]
                _access_line(fields)

    return access


def _access_line(fields: dict) -> None:
    """One access line: what ``access_log.info("access", **fields)`` writes, in the same order."""
    if not _direct_access[0]:
        access_log.info("access", **fields)
        return
    event = {"event": "access", **fields}
    request_fields(None, "info", event)
    process_fields(None, "info", event)
    event["level"] = "info"
    redact(None, "info", iso_timestamp(None, "info", event))
    _STDERR.write(dumps(event) + b"\n")
    _STDERR.flush()
