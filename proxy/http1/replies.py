"""Response heads the front writes: status lines, validated header lines, and canned answers.

Every header line a response head carries goes through :func:`header_lines`, which drops (and
never raises on) a name that is not an RFC 9110 token or a value that holds a control character or
cannot be encoded as latin-1: a response head is built from validated values only. Canned answers
(:func:`canned`) are fixed bytes per status: they never echo anything of the request.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

import structlog

from ..errors import problem_body

log = structlog.get_logger("flowgate.front")

OWN_HEADERS = frozenset(("content-length", "transfer-encoding", "connection", "date"))
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB

_date = [0, b""]


def date_header() -> bytes:
    now = int(time.time())
    if now != _date[0]:
        _date[0], _date[1] = now, b"Date: %s\r\n" % formatdate(now, usegmt=True).encode()
    return _date[1]  # type: ignore[return-value]


def status_line(status: int, reason: str | None = None) -> bytes:
    if reason is None or _BAD_VALUE.search(reason) or not reason.isascii():
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("ascii"))


def header_lines(headers: Mapping[str, str]) -> list[bytes]:
    """``Name: value`` lines for the sendable headers; the others are dropped and logged (by name only
    when the name itself is a token)."""
    lines = []
    for name, value in headers.items():
        if name.lower() in OWN_HEADERS:
            continue
        try:
            if TOKEN.fullmatch(name) is None or _BAD_VALUE.search(value) is not None:
                raise ValueError
            lines.append(b"%s: %s\r\n" % (name.encode("ascii"), value.encode("latin-1")))
        except (ValueError, UnicodeEncodeError, TypeError):
            log.warning("response_header_dropped", header=name if TOKEN.fullmatch(name or "") else "?")
    return lines


def _problem(status: int) -> bytes:
    phrase = HTTPStatus(status).phrase
    return problem_body(status, phrase, phrase, phrase.lower().replace(" ", "_").replace("-", "_"))


_CANNED: dict[int, bytes] = {}


def canned(status: int, *, close: bool = True, extra: bytes = b"") -> bytes:
    """A whole problem+json answer for ``status``, the same bytes whatever the request was."""
    body = _CANNED.get(status)
    if body is None:
        body = _CANNED[status] = _problem(status)
    return b"".join((status_line(status), b"Content-Type: application/problem+json\r\n", extra,
                     b"Content-Length: %d\r\n" % len(body), date_header(),
                     b"Connection: close\r\n" if close else b"", b"\r\n", body))
