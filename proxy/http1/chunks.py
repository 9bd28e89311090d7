"""HTTP/1.1 chunked framing as the gateway writes it (RFC 9112 section 7.1), for the sink
(:mod:`proxy.stream.sinks`) and the compiled text path (:mod:`proxy.stream.textpath`, which calls
``one_chunk`` from C). This file is plain Python and is also compiled by ``make install``
(``chunks.pxd`` gives its types), so both paths frame with this one function."""

from __future__ import annotations

# below this size a chunk and its framing are joined into one bytes object for one write; above it
# they go as three pieces in one writelines (no copy of a large chunk)
JOIN_BELOW = 2048
LAST_CHUNK = b"0\r\n\r\n"


def framed(pieces: list[bytes]) -> list[bytes]:
    """``pieces`` as chunks: size line, piece, CRLF each (an empty piece is the last chunk's)."""
    out: list[bytes] = []
    for data in pieces:
        out += (b"%x\r\n" % len(data), data, b"\r\n")
    return out


def one_chunk(data: bytes) -> bytes:
    """A small piece and its framing as one bytes object."""
    return b"%x\r\n%b\r\n" % (len(data), data)
