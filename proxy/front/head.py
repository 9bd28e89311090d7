"""One request head, parsed by httptools (llhttp) and checked against RFC 9112 before anything runs.

:func:`parse_head` takes the bytes of a whole head (up to and including its blank line) and returns
a :class:`Head`, or raises :class:`HeadError` with the status the front answers (and closes) with:

- 400: anything llhttp refuses (smuggling shapes: CL+TE, duplicate lengths, obs-fold, bad
  Transfer-Encoding), no ``Host`` or more than one in HTTP/1.1, or a ``Host`` that is not a valid
  ``host[:port]``;
- 431: more than :data:`MAX_HEADERS` header fields;
- 405: ``CONNECT`` (a gateway is no tunnel; answered with ``Allow``, never a 5xx for a client's choice).

An ``Upgrade`` (``h2c``, ``websocket``) is ignored, as uvicorn does: the request is served as plain
HTTP/1.1 and the ``Upgrade`` and ``Connection: upgrade`` fields are dropped. Keep-alive is decided
from the version and the ``Connection`` tokens (``close`` is honoured on every request).
"""

from __future__ import annotations

import httptools

from ..http1.headers import valid_host

MAX_HEADERS = 128


class HeadError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason  # a fixed, bounded word for the log line: never request bytes


class _Callbacks:
    __slots__ = ("url", "headers", "complete")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.complete = True


class Head:
    __slots__ = ("method", "url", "version", "headers", "keep_alive", "length", "chunked", "expect", "host")

    def __init__(self, method: str, url: str, version: str, headers: list[tuple[str, str]], keep_alive: bool,
                 length: int | None, chunked: bool, expect: str | None, host: str | None) -> None:
        self.method = method
        self.url = url
        self.version = version
        self.headers = headers
        self.keep_alive = keep_alive
        self.length = length
        self.chunked = chunked
        self.expect = expect
        self.host = host


def parse_head(raw: bytes) -> Head:
    cb = _Callbacks()
    parser = httptools.HttpRequestParser(cb)
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head is whole; the upgrade is ignored below (CONNECT refused)
    except httptools.HttpParserError:
        raise HeadError(400, "bad_head") from None
    if not cb.complete:
        raise HeadError(400, "bad_head")
    method = parser.get_method().decode("ascii", "replace")
    if method == "CONNECT":
        raise HeadError(405, "connect")
    if len(cb.headers) > MAX_HEADERS:
        raise HeadError(431, "too_many_headers")
    version = parser.get_http_version()
    headers: list[tuple[str, str]] = []
    connection: set[str] = set()
    hosts: list[str] = []
    length: int | None = None
    chunked = False
    expect = None
    for name, value in cb.headers:
        low = name.lower()
        if low == "connection":
            connection.update(t.strip().lower() for t in value.split(","))
        elif low == "host":
            hosts.append(value)
        elif low == "content-length":
            length = int(value)  # llhttp checked it is digits, and one value
        elif low == "transfer-encoding":
            chunked = True  # llhttp refused any coding but a final chunked
        elif low == "expect":
            expect = value
        elif low not in ("upgrade", "http2-settings", "keep-alive"):
            headers.append((name, value))
    if len(hosts) > 1 or (not hosts and version == "1.1"):
        raise HeadError(400, "host")
    host = None
    if hosts:
        host = valid_host(hosts[0])
        if host is None:
            raise HeadError(400, "host")
        headers.append(("Host", host))
    tokens = connection - {"upgrade", "http2-settings", "keep-alive", "close", ""}
    if tokens:  # the client's other connection-specific names stay listed (never forwarded)
        headers.append(("Connection", ", ".join(sorted(tokens))))
    if version == "1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    return Head(method, cb.url.decode("latin-1"), version, headers, keep_alive, length, chunked, expect, host)


def rebuild(head: Head) -> bytes:
    """The head as aiohttp is handed it: validated fields only, and ``Connection: close`` (one request)."""
    lines = [f"{head.method} {head.url} HTTP/{head.version}".encode("latin-1")]
    for name, value in head.headers:
        if name.lower() == "connection":
            continue
        lines.append(name.encode("latin-1") + b": " + value.encode("utf-8", "surrogateescape"))
    if head.length is not None:
        lines.append(b"Content-Length: %d" % head.length)
    if head.chunked:
        lines.append(b"Transfer-Encoding: chunked")
    if head.expect is not None:
        lines.append(b"Expect: " + head.expect.encode("utf-8", "surrogateescape"))
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"
