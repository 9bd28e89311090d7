"""The compiled chunked-body parser (proxy/upstream/chunked.pyx) against llhttp (httptools, response mode):
the same framings, valid and mutated, split at the same random points, must get the same verdict
(complete, incomplete, rejected), the same body, and complete at the same byte."""

from __future__ import annotations

import os

import httptools
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from proxy.upstream.chunked import MAX_TRAILER_BYTES, ChunkedParser
except ImportError:  # not built (no C compiler at install)
    if os.environ.get("REQUIRE_NATIVE") == "1":
        raise
    pytest.skip("proxy.upstream.chunked is not built (no C compiler at install)", allow_module_level=True)

HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Complete(Exception):
    pass


class _Llhttp:
    def __init__(self) -> None:
        self.body: list[bytes] = []

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        raise _Complete  # stop at the body's end, as the compiled parser does


def llhttp(pieces: list[bytes]) -> tuple[str, bytes]:
    cb = _Llhttp()
    parser = httptools.HttpResponseParser(cb)
    parser.feed_data(HEAD)
    for piece in pieces:
        try:
            parser.feed_data(piece)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Complete):
                return "complete", b"".join(cb.body)
            raise
        except httptools.HttpParserError:
            return "rejected", b"".join(cb.body)
    return "incomplete", b"".join(cb.body)


def compiled(pieces: list[bytes]) -> tuple[str, bytes]:
    parser, body = ChunkedParser(), []
    for piece in pieces:
        body += parser.feed(piece)
        if parser.done:
            return "complete", b"".join(body)
        if parser.failed:
            return "rejected", b"".join(body)
    return "incomplete", b"".join(body)


def end_of_body(stream: bytes) -> int:
    """Where the compiled parser says the body ends (fed one byte at a time)."""
    parser = ChunkedParser()
    for i in range(len(stream)):
        parser.feed(stream[i:i + 1])
        if parser.done:
            return i + 1
    raise AssertionError("not complete")


def same(stream: bytes, cuts: list[int]) -> None:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    pieces = [stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    want = llhttp(pieces)
    assert compiled(pieces) == want, (stream, pieces)
    if want[0] == "complete":  # at the same byte: llhttp is not complete one byte earlier
        end = end_of_body(stream)
        assert llhttp([stream[:end]])[0] == "complete" and llhttp([stream[:end - 1]])[0] == "incomplete"


# --- the framings ---

TCHARS = "!#$%&'*+-.^_`|~azAZ09"
token = st.text(st.sampled_from(TCHARS), max_size=4)
quoted = st.lists(st.sampled_from(list('ab \t!#~\\"') + ["\\\\", '\\"', "\x7f", "\x01"]), max_size=5).map("".join)
extension = st.one_of(
    token.map(lambda n: f";{n}"),
    st.tuples(token, token).map(lambda t: f";{t[0]}={t[1]}"),
    st.tuples(token, quoted).map(lambda t: f';{t[0]}="{t[1]}"'),
    st.sampled_from(["; a", ";a =b", ";a= b", ";a=b c", ";;", ";=", ';a="x"y', ";a=\x80", ";\t"]),
)
extensions = st.one_of(st.just(b""), st.lists(extension, max_size=2).map(lambda xs: "".join(xs).encode("latin-1")))
trailer = st.sampled_from([b"X-T: v\r\n"] * 8 + [
    b"X-T: v\r\n", b"Server-Timing: a;dur=1\r\n", b"X:v\r\n", b"X: \tv \r\n", b"X : v\r\n", b" X: v\r\n",
    b"Bad Name: v\r\n", b":v\r\n", b"X: v\r\n y\r\n", b"X: a\rb\r\n", b"X: v\n", b"X-\xff: v\r\n", b"X: \xff\r\n",
])
EOL = [b"\r\n"] * 30 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r"]


@st.composite
def framing(draw) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4))):
        data = draw(st.binary(min_size=1, max_size=12))
        size = len(data) + draw(st.sampled_from([0] * 16 + [-1, 1]))
        digits = draw(st.sampled_from(["{:x}", "{:X}", "0{:x}", "000{:x}"])).format(max(size, 0)).encode()
        out += digits + draw(extensions) + draw(st.sampled_from(EOL)) + data + draw(st.sampled_from(EOL))
    last = draw(st.sampled_from([b"0"] * 12 + [
        b"00", b"0000000000000000000", b"ffffffffffffffff", b"10000000000000000", b"fffffffffffffffff", b"0 ", b"0\t",
        b"", b"g", b"-0", b"0x0"]))
    out += last + draw(extensions) + draw(st.sampled_from(EOL))
    if draw(st.integers(0, 3)) == 0:
        out += b"".join(draw(st.lists(trailer, min_size=1, max_size=2)))
    out += draw(st.sampled_from(EOL))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # mutations: a byte replaced, inserted or deleted
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        byte = draw(st.sampled_from(list(b" \t\r\n;=\"\\0aFg:\x00\x7f\xff")))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        out = (out[:at] + bytes([byte]) + out[at + 1:] if op == "replace" else
               out[:at] + bytes([byte]) + out[at:] if op == "insert" else out[:at] + out[at + 1:])
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_compiled_parser_reads_every_framing_as_llhttp_does(data):
    stream = data.draw(framing(), label="stream")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=4), label="cuts")
    same(stream, cuts)


@pytest.mark.parametrize("stream", [
    b"5 junk\r\nhello\r\n0\r\n\r\n",  # what the compiled parser used to accept
    b"5 \r\nhello\r\n0\r\n\r\n", b"5\t\r\nhello\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n",
    b"5;name=value\r\nhello\r\n0\r\n\r\n", b"5;a;b=c;d=\"q \\\" s\"\r\nhello\r\n0\r\n\r\n",
    b"5;=v\r\nhello\r\n0\r\n\r\n",
    b"5; a\r\nhello\r\n0\r\n\r\n", b"5;a=b c\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\n0\r\n\r\n", b"5\r\nhelloX\r\n0\r\n\r\n", b"0\r\n\n",
    b"ffffffffffffffff\r\n", b"fffffffffffffffff\r\n", b"00000000000000000005\r\nhello\r\n0\r\n\r\n",
    b"0\r\nX-T: v\r\n\r\n", b"0\r\nX : v\r\n\r\n", b"0\r\nX: v\r\n y\r\n\r\n", b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
])
def test_known_framings_read_as_llhttp_reads_them(stream):
    for cut in range(len(stream) + 1):
        same(stream, [cut])


def test_a_trailer_section_is_bounded():
    stream = b"0\r\n" + b"X-T: v\r\n" * (MAX_TRAILER_BYTES // 8 + 1) + b"\r\n"
    assert llhttp([stream])[0] == "complete"  # llhttp alone has no bound here; the gateway has one
    assert compiled([stream])[0] == "rejected"


@given(st.data())
def test_skip_reads_what_feed_reads_and_stops_at_the_bodys_last_byte(data):
    """``skip`` (the front's hand-over of a chunked request: proxy/front/handover.py) gives the
    verdict ``feed`` gives, and says how many bytes were the body's: none of what follows it."""
    stream = data.draw(framing(), label="stream")
    after = data.draw(st.sampled_from([b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"\r\n", b"0\r\n\r\n"]))
    whole = stream + after
    cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=4), label="cuts")
    bounds = [0, *sorted(set(cuts)), len(whole)]
    pieces = [whole[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    parser, read = ChunkedParser(), 0
    for piece in pieces:
        n = parser.skip(piece)
        read += n
        if parser.done or parser.failed:
            break
        assert n == len(piece)
    verdict = "complete" if parser.done else "rejected" if parser.failed else "incomplete"
    assert verdict == compiled(pieces)[0]
    if parser.done:
        assert read == end_of_body(whole) <= len(whole)


@pytest.mark.parametrize("section", [
    b"".join(b"X-%d: v\r\n" % i for i in range(150)),  # past MAX_TRAILER_FIELDS
    b"X-Big: " + b"a" * (MAX_TRAILER_BYTES + 10) + b"\r\n",  # past MAX_TRAILER_BYTES
], ids=["fields", "bytes"])
def test_an_unbounded_parser_reads_a_trailer_section_past_a_backends_limits(section):
    """A backend's body fails past the limits; the front's reading of a client's request (whose
    trailers aiohttp's parser limits) ends at the section's end, not one byte further."""
    stream = b"3\r\nabc\r\n0\r\n" + section + b"\r\n"
    bounded = ChunkedParser()
    bounded.skip(stream)
    assert bounded.failed
    unbounded = ChunkedParser(bounded=False)
    assert unbounded.skip(stream + b"GET / HTTP/1.1\r\n\r\n") == len(stream) and unbounded.done
    malformed = ChunkedParser(bounded=False)
    malformed.skip(b"3\r\nabc\r\n0\r\nX-T v\r\n\r\n")
    assert malformed.failed
