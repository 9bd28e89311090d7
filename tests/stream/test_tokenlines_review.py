"""Review of the Langflow token scanner (c590958): it reads only its own line inside the text path's
read buffer (a line cut in an escape, a string or an object, then the next line, must not be read
as one), and, fuzzed against orjson + LangflowDecoder, takes nothing orjson reads otherwise."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.stream.test_textpath_events import _pump, _run, _text, frame
from tests.stream.test_tokenlines import _agrees

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
        assert _text("text", fast_t.writes) == _text("text", slow_t.writes) == "z", chunks
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
