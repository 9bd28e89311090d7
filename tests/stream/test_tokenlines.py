"""The Langflow ``token`` event scanner (proxy/stream/tokenlines.pyx, ``langflow_token``): what it
takes it reads exactly as orjson + ``LangflowDecoder.frame`` read the line; what it does not take
(None) the text path parses. Held to orjson on Langflow's own lines, on hand-made hostile ones and
on generated ones (hypothesis); and it reads only its own line of the text path's read buffer (a
line cut inside an escape, a string or an object never reads on into the next)."""

from __future__ import annotations

import importlib
import json
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.protocols.events import Token
from proxy.protocols.langflow import LangflowDecoder
from tests.stream.test_textpath import TextPath  # noqa: F401 - skips (or fails: REQUIRE_NATIVE=1) unbuilt
from tests.stream.test_textpath_events import _pump, _run, frame
from tests.stream.test_textpath_events import _text as written

scan = importlib.import_module("proxy.stream.tokenlines").scan_langflow_token  # built, once past that import


def _reads(line: bytes):
    """What the Python decoder makes of the line: ``(text, emitted)``, or None for a line it does
    not read as a token event."""
    try:
        frame = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(frame) is not dict or frame.get("event") != "token":
        return None
    decoder, out = LangflowDecoder(), []
    decoder.frame(frame, out)
    return "".join(e.text for e in out if isinstance(e, Token)), decoder.emitted


def _scanned(line: bytes, last_id=None):
    got = scan(line, last_id)
    if got is None:
        return None
    chunk, msg_id = got
    return chunk, ({msg_id: len(chunk)} if chunk else {})


def _agrees(line: bytes, last_id=None) -> bool:
    """True when the scanner took the line (and then it must read as the decoder does, whatever
    the previous line's message id was)."""
    got = _scanned(line, last_id)
    if got is not None:
        assert got == _reads(line), (line, last_id)
    return got is not None


def test_a_message_id_like_the_last_one_is_that_same_object():
    last = "".join(["msg-", "1"])  # (a str made at run time, not an interned constant)
    chunk, msg_id = scan(b'{"event": "token", "data": {"chunk": "a", "id": "msg-1"}}', last)
    assert msg_id is last
    for line, other in ((b'{"event": "token", "data": {"chunk": "a", "id": "msg-2"}}', "msg-2"),
                        (b'{"event": "token", "data": {"chunk": "a", "id": "msg-"}}', "msg-"),
                        (b'{"event": "token", "data": {"chunk": "a", "id": "msg-11"}}', "msg-11"),
                        (b'{"event": "token", "data": {"chunk": "a", "id": "msg\\u002d1"}}', "msg-1")):
        got = scan(line, last)[1]
        assert got == other and (got is not last or other == last)
    assert scan(b'{"event": "token", "data": {"chunk": "a", "id": "\\u00e9"}}', "\u00e9")[1] == "\u00e9"
    assert scan(b'{"event": "token", "data": {"chunk": "a", "id": "x"}}', b"x")[1] == "x"  # not a str: made


LANGFLOW = [  # json.dumps as Langflow writes its events: ", " and ": ", non-ASCII as \\u escapes
    {"event": "token", "data": {"chunk": "Hello", "id": "c1b5", "timestamp": "2026-12-01 00:00:00 UTC"}},
    {"event": "token", "data": {"chunk": " wörld 😀\n\t\"q\" \\ / \x00\x1f", "id": "m"}},
    {"data": {"id": "m", "chunk": "order"}, "event": "token"},
    {"event": "token", "data": {"chunk": "", "id": "m"}},
    {"event": "token", "data": {"id": "m"}},
    {"event": "token", "data": {}},
    {"event": "token", "data": "not an object"},
    {"event": "token"},
    {"event": "token", "data": {"chunk": "no id"}},
    {"event": "token", "data": {"chunk": "x", "id": ""}},
    {"event": "token", "data": {"chunk": "\u2028\uffff\U0010ffff", "id": "\u00e9"}},
]


@pytest.mark.parametrize("frame", LANGFLOW)
@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_langflow_token_events_are_scanned_as_they_parse(frame, separators):
    for ascii_only in (True, False):
        line = json.dumps(frame, separators=separators, ensure_ascii=ascii_only).encode()
        taken = _agrees(line)
        assert taken or not line.isascii(), line  # every ASCII token line of these shapes is scanned


HOSTILE = [
    b'{"event": "token", "data": {"chunk": "a", "chunk": "b"}}',  # the last key wins
    b'{"event": "token", "data": {"chunk": "a", "id": "1", "id": "2"}}',
    b'{"event": "token", "data": {"chunk": "a"}, "data": "b"}',  # data, then not an object
    b'{"event": "token", "data": "b", "data": {"chunk": "c"}}',
    b'{"event": "end", "event": "token", "data": {"chunk": "a"}}',
    b'{"event": "token", "event": "end", "data": {"chunk": "a"}}',
    b' \t{ "event" :"token" , "data":{ "chunk" : "ws" } } \r',
    b'{"event": "token", "data": {"chunk": "a"}} x',  # trailing junk: not JSON
    b'{"event": "token", "data": {"chunk": "a"}',  # unterminated
    b'{"event": "token", "data": {"chunk": "a}}',
    b'{"event": "token", "data": {"chunk": "a",}}',  # trailing comma
    b'{"event": "token", "data": {"chunk": "a"},}',
    b'{"event": "token" "data": {"chunk": "a"}}',
    b'{"event": "tok\\u0065n", "data": {"chunk": "escaped name"}}',
    b'{"ev\\u0065nt": "token", "data": {"chunk": "escaped key"}}',
    b'{"event": "token", "data": {"ch\\u0075nk": "escaped inner key"}}',
    b'{"event": "token", "data": {"chunk": "lone \\ud800 high"}}',
    b'{"event": "token", "data": {"chunk": "lone \\udc00 low"}}',
    b'{"event": "token", "data": {"chunk": "\\ud83d\\u0041 bad pair"}}',
    b'{"event": "token", "data": {"chunk": "\\ud83d\\ude00 pair"}}',
    b'{"event": "token", "data": {"chunk": "\\U0041 bad escape"}}',
    b'{"event": "token", "data": {"chunk": "\\x41 bad escape"}}',
    b'{"event": "token", "data": {"chunk": "\\u00g1 bad hex"}}',
    b'{"event": "token", "data": {"chunk": "\\u00e"}}',
    b'{"event": "token", "data": {"chunk": "tab\tinside"}}',  # a raw control character
    b'{"event": "token", "data": {"chunk": "\xc3\xa9 raw UTF-8"}}',
    b'{"event": "token", "data": {"chunk": "\xff invalid UTF-8"}}',
    b'{"event": "token", "data": {"chunk": "a", "id": 5}}',
    b'{"event": "token", "data": {"chunk": "a", "id": null}}',
    b'{"event": "token", "data": {"chunk": ["a"]}}',
    b'{"event": "token", "data": {"chunk": "a", "meta": {"x": 1}}}',
    b'{"event": "token", "data": {"chunk": "a"}, "extra": [1]}',
    b'{"event": ["token"], "data": {"chunk": "a"}}',
    b'{"event": "token", "data": {"chunk": "\\\\"}}',
    b'{"event": "token", "data": {"chunk": "\\"}}',
    b'{"event": "token", "data": {"chunk": "a\\"}}',
    b'{}', b'[]', b'{"event": "token"', b'"token"', b'{"event": }', b'{"": "token"}',
    b'{"event": "token", "data": {"": ""}}', b'{"event": "token", "data": {"chunk": "\\/"}}',
]


@pytest.mark.parametrize("line", HOSTILE)
def test_hostile_lines_read_as_orjson_reads_them_or_go_to_orjson(line):
    _agrees(line)
    for cut in range(len(line)):  # every prefix, as a line cut short
        _agrees(line[:cut])


def test_a_well_formed_pair_and_whitespace_are_scanned_not_parsed():
    assert scan(b'{"event": "token", "data": {"chunk": "\\ud83d\\ude00 pair"}}') == ("😀 pair", "")
    assert scan(b' \t{ "event" :"token" , "data":{ "chunk" : "ws" } } \r') == ("ws", "")
    assert scan(b'{"event": "token", "data": {"chunk": "a", "chunk": "b", "id": "1", "id": "2"}}') == ("b", "2")
    assert scan(b'{"event": "token", "data": {"chunk": "a"}, "data": "b"}') == ("", None)
    assert scan(b'{"event": "end", "data": {"result": "x"}}') is None  # another event: the decoder's


_text = st.text(st.characters(codec="utf-8"), max_size=8)
_keys = st.sampled_from(["event", "data", "chunk", "id", "timestamp", "x"]) | _text
_scalar = _text | st.sampled_from(["token", "end", ""]) | st.integers() | st.none() | st.booleans()
_inner = st.dictionaries(_keys, _scalar | st.lists(_scalar, max_size=2), max_size=4)
_frames = st.dictionaries(_keys, _scalar | _inner, max_size=4) | st.builds(
    lambda d, e: {"event": e, "data": d}, _inner, st.sampled_from(["token", "end", "tok"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=_frames, compact=st.booleans(), ascii_only=st.booleans(), cut=st.integers(0, 200),
       junk=st.sampled_from([b"", b" ", b"\r", b"x", b"}", b'"', b"\\", b","]))
def test_generated_lines_read_as_orjson_reads_them(frame, compact, ascii_only, cut, junk):
    line = json.dumps(frame, separators=(",", ":") if compact else (", ", ": "), ensure_ascii=ascii_only).encode()
    _agrees(line)
    data = frame.get("data")
    _agrees(line, data.get("id") if isinstance(data, dict) else None)  # the last line's id the same
    _agrees(line[:cut] + junk + line[cut:])  # a byte put anywhere
    _agrees(line[:cut] + line[cut + 1:])  # a byte taken anywhere


CUT = [  # a line that would read as a token event if its reader went on past its end into the next
    (b'{"event": "token", "data": {"chunk": "a"}', b'}'),
    (b'{"event": "token", "data": {"chunk": "a"', b'}}'),
    (b'{"event": "token", "data": {"chunk": "a\\', b'"}}'),
    (b'{"event": "token", "data": {"chunk": "\\u00', b'41"}}'),
    (b'{"event": "token", "data": {"chunk": "\\ud83d', b'\\ude00"}}'),
    (b'{"event": "token", "data": {"chunk": "\\ud83d\\u', b'de00"}}'),
    (b'{"event": "token", "data": {"chunk": "a", "id": "m', b'"}}'),
    (b'{"event": "tok', b'en", "data": {"chunk": "a"}}'),
    (b'{"event": "token", "data": {"chunk": "a"}, ', b'"x": "y"}'),
]


@pytest.mark.parametrize("first,second", CUT)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\n\n"])
async def test_a_line_cut_short_is_read_alone_in_the_read_buffer(first, second, eol):
    body = first + eol + second + eol + frame("token", {"chunk": "z", "id": "m"}) + frame("end", {"result": {}})
    for cut in [*range(1, len(body)), None]:
        chunks = [frame("vertices_sorted", {}), *([body] if cut is None else [body[:cut], body[cut:]])]
        fast, fast_t = _pump("text")
        _run(fast, chunks, compiled=True)
        slow, slow_t = _pump("text")
        _run(slow, chunks, compiled=False)
        assert written("text", fast_t.writes) == written("text", slow_t.writes) == "z", chunks
        assert fast.decoder.emitted == slow.decoder.emitted == {"m": 1}, chunks


_CH = st.sampled_from(['a', '\\', '"', '/', '\x00', '\x1f', '\x7f', 'é', '\u2028', '\ud7ff', '\ue000', '\uffff',
                       '😀', '\U0010ffff', '{', '}', ',', ':', ' '])
_S = st.text(_CH, max_size=6)
_KEY = st.sampled_from(["event", "data", "chunk", "chunks", "chun", "id", "i", "ids", "", "Data", "event "]) | _S
_VAL = _S | st.sampled_from(["token", "token ", "Token", ""]) | st.integers() | st.none() | st.booleans()
_INNER = st.lists(st.tuples(_KEY, _VAL | st.lists(_VAL, max_size=1)), max_size=5)
_OUTER = st.lists(st.tuples(_KEY, _VAL | _INNER.map(lambda kv: ("obj", kv))), max_size=5)


def _dump(pairs, compact: bool, ascii_only: bool) -> str:  # duplicate keys kept, as a hostile backend sends them
    sep, colon = (",", ":") if compact else (", ", ": ")
    out = []
    for k, v in pairs:
        if isinstance(v, tuple) and v and v[0] == "obj":
            v = _dump(v[1], compact, ascii_only)
        else:
            v = json.dumps(v, ensure_ascii=ascii_only)
        out.append(json.dumps(k, ensure_ascii=ascii_only) + colon + v)
    return "{" + sep.join(out) + "}"


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(pairs=_OUTER, token=_INNER, compact=st.booleans(), ascii_only=st.booleans(), seed=st.integers(0, 2**32))
def test_duplicate_keys_prefixes_and_escapes_read_as_orjson_reads_them(pairs, token, compact, ascii_only, seed):
    pairs = [*pairs, ("event", "token"), ("data", ("obj", token))] if seed % 2 else [("event", "token"), *pairs]
    line = _dump(pairs, compact, ascii_only).encode()
    _agrees(line)
    rng = random.Random(seed)
    for _ in range(4):  # a byte changed, put, taken anywhere
        b = bytearray(line)
        i = rng.randrange(len(b) + 1)
        op = rng.randrange(3)
        if op == 0 and i < len(b):
            b[i] = rng.choice(b'\\"{}:, \r\t\x00u0dD/nx\x7f\x80')
        elif op == 1:
            b[i:i] = rng.choice([b"\\", b'"', b"\\u", b"\\ud800", b"\\udc00", b"\r", b"}", b"{"])
        elif b:
            del b[min(i, len(b) - 1)]
        _agrees(bytes(b))


@pytest.mark.parametrize("size", [1, 255, 256, 257, 5000])
def test_escaped_chunks_on_either_side_of_the_stack_buffer_read_as_orjson_reads_them(size):
    for unit in ("\n", "é", "😀", "a\\"):
        chunk = (unit * size)[:size] if len(unit) == 1 else unit * (size // len(unit) + 1)
        line = json.dumps({"event": "token", "data": {"chunk": chunk, "id": "m"}}).encode()
        assert _agrees(line), line[:80]
