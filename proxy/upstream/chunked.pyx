# cython: language_level=3, boundscheck=False, wraparound=False
"""A chunked response body's framing (RFC 9112 section 7.1), read exactly as llhttp reads it in
its strict mode, and :class:`ChunkedBody`, the socket's protocol while a backend's chunked body is
read: the upstream connection hands every chunked body to it (whatever consumes it: the pump, the
compiled text path, a buffer) instead of going through httptools, which costs a Python call per
read and per piece.

Why hand-written: llhttp (through httptools) has no way to hand body bytes to C code, and this is
the per-chunk path. So it copies llhttp's grammar state by state (``chunk_size_start`` to
``chunk_data_almost_done``, llhttp's ``src/llhttp/http.ts``), and ``tests/test_chunked.py`` feeds
both the same random and mutated framings, split at random points, and asserts the same verdict
(accepted, incomplete or rejected) and the same body:

- chunk-size: 1*HEXDIG (leading zeros allowed), at most 2**64 - 1; nothing else before CRLF or
  ``;`` (no spaces, no tabs, no bare LF);
- chunk extensions: ``;name``, ``;name=token`` or ``;name="quoted \\"pair\\""``, as llhttp's
  ``chunk_extension_*`` states (an empty name is accepted, a space anywhere is not); read past;
- chunk data, then exactly CRLF;
- the last chunk, then either CRLF (no trailers: the common case, read here) or a trailer section,
  which is fed to llhttp itself (its field-line grammar is long and the section is rare), at most
  ``MAX_TRAILER_BYTES`` and ``MAX_TRAILER_FIELDS`` of it.

A parser reads one body and nothing after it: ``scan`` stops at the body's last byte (state DONE);
what follows is for the caller to refuse.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memset

import httptools

MAX_TRAILER_BYTES = 65536
MAX_TRAILER_FIELDS = 100
cdef Py_ssize_t _MAX_TRAILER = MAX_TRAILER_BYTES
cdef unsigned long long _U64_MAX = 0xFFFFFFFFFFFFFFFFULL
_PRIMER = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"

# llhttp's character classes (src/llhttp/constants.ts): TOKEN (tchar), QDTEXT, and a quoted-pair's
# second byte (HTAB / SP / VCHAR / obs-text)
cdef unsigned char TCHAR[256]
cdef unsigned char QDTEXT[256]
cdef unsigned char QPAIR[256]


cdef void _classes() noexcept:
    cdef int c
    memset(TCHAR, 0, 256)
    memset(QDTEXT, 0, 256)
    memset(QPAIR, 0, 256)
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    for c in range(256):
        QDTEXT[c] = c == 9 or c == 32 or c == 0x21 or 0x23 <= c <= 0x5B or 0x5D <= c <= 0x7E or c >= 0x80
        QPAIR[c] = c == 9 or 0x20 <= c <= 0x7E or c >= 0x80


_classes()


cdef inline int _hex(unsigned char c) noexcept:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


class _Section:
    """llhttp reading a trailer section: primed with a chunked head and a last chunk. No field
    callback, so httptools keeps none of the section: it streams through llhttp."""

    def __init__(self) -> None:
        self.done = False
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(_PRIMER)

    def on_message_complete(self) -> None:
        self.done = True

    def feed(self, data: bytes) -> bool:
        """False when llhttp refuses the bytes."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            return False
        return True


class _Trailers(_Section):
    """A trailer section of at most ``MAX_TRAILER_FIELDS`` fields (a backend's)."""

    def __init__(self) -> None:
        self.fields = 0
        super().__init__()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        if self.fields > MAX_TRAILER_FIELDS:
            raise ValueError("too many trailer fields")


cdef enum:
    SIZE_START, SIZE, EXT, EXT_NAME, EXT_VALUE, EXT_QUOTED, EXT_QPAIR, EXT_QDONE, SIZE_LF, DATA, DATA_CR,
    DATA_LF, TRAILER, END_LF, TRAILERS, DONE, FAILED


cdef class ChunkedParser:
    """One chunked body's framing. ``scan`` (from C) or ``feed`` (from Python, for the tests).

    ``bounded`` (a backend's body): a trailer section past ``MAX_TRAILER_BYTES`` or
    ``MAX_TRAILER_FIELDS`` fails the body. Unbounded (the front finding where a client's chunked
    request ends, for aiohttp's parser, which applies its own limits): only malformed framing
    fails it."""

    cdef readonly int state
    cdef unsigned long long remaining
    cdef object trailers
    cdef bytes tail
    cdef Py_ssize_t trailer_bytes
    cdef bint bounded

    def __init__(self, bint bounded=True):
        self.state = SIZE_START
        self.remaining = 0
        self.tail = b""
        self.bounded = bounded

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    def feed(self, bytes data) -> list:
        """The body pieces in ``data``; then see ``done`` / ``failed``. Bytes after the body's end
        are not read (``feed`` returns as the body ends)."""
        cdef Py_ssize_t i = 0, start = 0, take = 0, n = PyBytes_GET_SIZE(data)
        pieces = []
        while i < n and self.state < DONE:
            i = self.scan(data, i, &start, &take)
            if take:
                pieces.append(data[start:start + take])
        return pieces

    def skip(self, bytes data) -> int:
        """Read ``data`` as the body's next bytes without keeping them: how many belong to the body
        (all of them until its end; then see ``done`` / ``failed``). The front hands a chunked
        request to aiohttp up to the body's end and no further (:mod:`proxy.front.handover`)."""
        cdef Py_ssize_t i = 0, start = 0, take = 0, n = PyBytes_GET_SIZE(data)
        while i < n and self.state < DONE:
            i = self.scan(data, i, &start, &take)
        return i

    cdef Py_ssize_t scan(self, bytes data, Py_ssize_t i, Py_ssize_t *start, Py_ssize_t *take) except -1:
        """Read ``data`` from ``i`` up to a run of body bytes (``*start``, ``*take``; the run is
        read), the body's end (DONE), a fault (FAILED) or the end of ``data``; returns where it
        stopped."""
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), k
        cdef int state = self.state, v
        cdef unsigned char c
        take[0] = 0
        while i < n:
            if state == DATA:
                k = n - i if <unsigned long long>(n - i) < self.remaining else <Py_ssize_t>self.remaining
                start[0], take[0] = i, k
                self.remaining -= k
                self.state = DATA_CR if self.remaining == 0 else DATA
                return i + k
            if state == TRAILERS:
                self.state = state
                return self._trailers(data, i)
            c = p[i]
            i += 1
            if state == SIZE_START or state == SIZE:  # chunk_size_start, chunk_size, chunk_size_otherwise
                v = _hex(c)
                if v >= 0:
                    if self.remaining > (_U64_MAX - <unsigned long long>v) >> 4:
                        state = FAILED  # "Chunk size overflow"
                    else:
                        self.remaining = self.remaining * 16 + <unsigned long long>v
                        state = SIZE
                elif state == SIZE and c == c'\r':
                    state = SIZE_LF
                elif state == SIZE and c == c';':
                    state = EXT
                else:
                    state = FAILED
            elif state == EXT:  # chunk_extensions: the name starts with this byte
                if c == c' ' or c == c'\r':
                    state = FAILED
                else:
                    state = EXT_NAME
                    i -= 1
            elif state == EXT_NAME:
                if TCHAR[c]:
                    pass
                elif c == c'=':
                    state = EXT_VALUE
                elif c == c';':
                    state = EXT
                elif c == c'\r':
                    state = SIZE_LF
                else:
                    state = FAILED
            elif state == EXT_VALUE:
                if c == c'"':
                    state = EXT_QUOTED
                elif TCHAR[c]:
                    pass
                elif c == c';':
                    state = EXT
                elif c == c'\r':
                    state = SIZE_LF
                else:
                    state = FAILED
            elif state == EXT_QUOTED:
                if c == c'"':
                    state = EXT_QDONE
                elif c == c'\\':
                    state = EXT_QPAIR
                elif not QDTEXT[c]:
                    state = FAILED
            elif state == EXT_QPAIR:
                state = EXT_QUOTED if QPAIR[c] else FAILED
            elif state == EXT_QDONE:
                if c == c';':
                    state = EXT
                elif c == c'\r':
                    state = SIZE_LF
                else:
                    state = FAILED
            elif state == SIZE_LF:
                if c != c'\n':
                    state = FAILED
                else:
                    state = TRAILER if self.remaining == 0 else DATA
            elif state == DATA_CR:
                state = DATA_LF if c == c'\r' else FAILED
            elif state == DATA_LF:
                state = SIZE_START if c == c'\n' else FAILED
            elif state == TRAILER:  # no trailers (CRLF), or a trailer section: llhttp's
                if c == c'\r':
                    state = END_LF
                else:
                    state = TRAILERS
                    i -= 1
            elif state == END_LF:
                state = DONE if c == c'\n' else FAILED
            if state >= DONE:
                break
        self.state = state
        return i

    cdef Py_ssize_t _trailers(self, bytes data, Py_ssize_t i) except -1:
        """The trailer section: to llhttp up to its end (the first CRLF CRLF in it; a field line
        holds no CR), and not one byte more."""
        if self.trailers is None:
            self.trailers = _Trailers() if self.bounded else _Section()
        rest = data[i:] if i else data
        seen = self.tail + rest
        end = seen.find(b"\r\n\r\n")
        cut = len(rest) if end < 0 else end + 4 - len(self.tail)
        self.trailer_bytes += cut
        if (self.bounded and self.trailer_bytes > _MAX_TRAILER) or not self.trailers.feed(rest[:cut] if cut < len(rest) else rest):
            self.state = FAILED
            return i + cut
        if end < 0:
            self.tail = seen[-3:]
        else:
            self.state = DONE if self.trailers.done else FAILED
            self.trailers = None
        return i + cut


cdef class ChunkedBody:
    """The transport's protocol while one chunked response body is read (made by
    :meth:`proxy.upstream.connection.Connection.attach`): per socket read, every body piece to
    ``consumer.body(piece)``, then one ``consumer.flush()``: the same calls, in the same order,
    as the connection makes for a body its parser reads, so a consumer cannot tell the two apart.

    At the body's end the connection is the protocol again and is told (``chunked_done``), as if
    llhttp had read the body: complete, reusable when keep-alive. Malformed framing or a trailer
    section over its limits is the backend's failure (``chunked_failed``: the stream breaks off,
    the connection is dropped); a byte after the body drops the connection (``refuse_extra``);
    the socket's end mid-body is the connection's (``connection_lost``)."""

    cdef object conn, piece, flush
    cdef ChunkedParser chunks
    cdef bint keep_alive
    cdef readonly long long raw_in  # bytes read here (the connection's read timer adds them to its own)

    def __init__(self, conn, consumer, list raw):
        """``conn`` has parsed exactly the response's head; ``raw`` is what arrived after it."""
        self.conn = conn
        self.piece = consumer.body
        self.flush = consumer.flush
        self.keep_alive = conn.parser.should_keep_alive()
        self.chunks = ChunkedParser()
        conn.transport.set_protocol(self)
        for data in raw:
            self.data_received(data)

    def data_received(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), i = 0, start = 0, take = 0
        cdef ChunkedParser chunks = self.chunks
        self.raw_in += n
        if chunks.state >= DONE:
            if chunks.state == DONE:
                self.conn.refuse_extra()
            return
        while i < n:
            i = chunks.scan(data, i, &start, &take)
            if take:
                self.piece(data if take == n else PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + start, take))
            if chunks.state == FAILED:
                self.conn.chunked_failed()
                break
            if chunks.state == DONE:
                conn = self.conn
                transport = conn.transport
                if transport is not None:
                    transport.set_protocol(conn)
                conn.chunked_done(self.keep_alive)
                if i < n:  # bytes after the body: never read, the connection is dropped
                    conn.refuse_extra()
                break
        self.flush()

    def eof_received(self):
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc):
        self.conn.connection_lost(exc)  # mid-body: the connection reports the stream broken

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass
