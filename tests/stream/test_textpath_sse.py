"""The compiled path reading Server-Sent Events (proxy/stream/textpath.pyx, ``SSE``): at every split
of an OpenAI-style event stream the same bytes, metering, usage and decoder state as the Python
pump, hostile streams read alike, and through the gateway the same text and charge with the
compiled path on and off."""

from __future__ import annotations

import asyncio
import json
import math
import time

import orjson
import pytest

from proxy.protocols import new_decoder
from proxy.protocols._lines import MAX_LINE_BYTES
from proxy.protocols.sse import SseDecoder
from tests.conftest import stream_chunks
from tests.policies.test_credits import settled
from tests.stream.test_pump import open_stream
from tests.stream.test_textpath import TextPath, _body, _config, _quiet_hook, _release_held, _split_everywhere, _unframe
from tests.stream.test_textpath import _pump as text_pump


def chunk(content=None, *, text=None, crlf: bool = False, space: bool = True, escaped: bool = False,
          **extra) -> bytes:
    """One ``data:`` event holding an OpenAI chat (``content``) or completion (``text``) chunk."""
    choice = {"index": 0, "text": text} if text is not None else {"index": 0, "delta": {"content": content}}
    obj = {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra}  # (usage=None: "usage": null)
    body = json.dumps(obj).encode() if escaped else orjson.dumps(obj)  # \\u escapes, or raw UTF-8
    end = b"\r\n" if crlf else b"\n"
    return (b"data: " if space else b"data:") + body + end + end


USAGE = {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
SSE = b"".join([
    b": a comment, then an event with no data\n\nid: 1\nretry: 100\n\n",
    chunk(""),  # the role chunk: nothing generated
    chunk("Grüße", usage=None, model="gpt-4o", system_fingerprint="fp"),
    chunk(", 世界", escaped=True),
    chunk("!", crlf=True),
    chunk(" to", space=False),
    b'data: {"choices":[{"delta":\ndata: {"content":" multi"}}]}\n\n',  # one JSON value over two data lines
    b'data: {"choices":[{"delta":{"content":"x"}}]}\ndata: {"more": 1}\n\n',  # two lines: not JSON, a Token
    b"event: ping\n" + chunk(" evt"),  # an event name (not error): the decoder's
    b": keep-alive\n",
    chunk(text=" done"),  # a completion chunk
    b"data: plain words\n\n",  # not JSON: a Token
    b'data: {"object":"other","n":1}\n\n',  # JSON of another shape: an Item
    chunk(" …", usage={"prompt_tokens": 3}),  # a chunk with usage: the decoder's
    chunk("", usage=None),
    b'data: {"choices":[],"usage":' + orjson.dumps(USAGE) + b"}\r\n\r\n",
    b"data: [DONE]\n\n",
])
GENERATED = ('Grüße, 世界! to multi{"choices":[{"delta":{"content":"x"}}]}\n{"more": 1} evt done'
             "plain words …")


def _pump(output: str, hooks=(), quiet=()):
    return text_pump(output, hooks, quiet, "sse")


def _state(decoder: SseDecoder) -> tuple:
    lines = decoder.lines
    return decoder._event, decoder._data, decoder._size, lines.buf + b"".join(lines.parts or ()), lines.size


def _lockstep(output: str, chunks, hooks=(), quiet=()) -> list[tuple]:
    """Both paths fed the same pieces; after every piece the same decoder state and the same bytes
    written. Returns each path's outcome, message, metering, bytes and output."""
    pumps = [_pump(output, hooks, quiet) for _ in range(2)]
    consumers = [pumps[0][0].fast, pumps[1][0]]
    for piece in chunks:
        for consumer in consumers:
            consumer.body(piece)  # type: ignore[union-attr]
            consumer.flush()  # type: ignore[union-attr]
        (fast, fast_t), (slow, slow_t) = pumps
        if not (fast.ended or slow.ended):
            assert _state(fast.decoder) == _state(slow.decoder), chunks
        assert _body(fast, fast_t) == _body(slow, slow_t), chunks
    seen = []
    for (pump, transport), consumer in zip(pumps, consumers, strict=True):
        consumer.end()  # type: ignore[union-attr]
        pump.detach()
        seen.append((pump.done.result(), pump.message, pump.run.meter, pump.run.bytes_in,  # type: ignore[union-attr]
                     pump.run.bytes_out, _body(pump, transport)))
    return seen


def _text(output: str, body: bytes) -> str:
    if output == "ui":
        parts = [json.loads(e[6:]) if e != b"data: [DONE]" else "[DONE]" for e in body.split(b"\n\n") if e]
        return "".join(p["delta"] for p in parts if p != "[DONE]" and p["type"] == "text-delta")
    if output == "json-array":
        closed = body.endswith(b"]")  # (a completed run's closing "]" is the pump's)
        return "".join(e for e in json.loads(b"[" + body + (b"" if closed else b"]")) if isinstance(e, str))
    return body.decode()


def test_the_compiled_path_takes_sse_transcoded():
    assert TextPath.takes(new_decoder("sse"), False)
    assert not TextPath.takes(new_decoder("sse"), True)


@pytest.mark.parametrize("output", ["text", "json-array", "ui"])
async def test_every_split_of_an_sse_stream_reads_as_the_python_pump_reads_it(output):
    for chunks in _split_everywhere(SSE):
        fast, slow = _lockstep(output, [b": first\n\n", *chunks])  # (the first piece is the pump's on either path)
        assert fast == slow, chunks
        assert fast[0] == "completed" and fast[2].chars == len(GENERATED) and fast[2].reported_output == 9
        assert _text(output, fast[5]) == GENERATED or output == "text"  # (text: an Item's JSON is text too)


async def test_token_events_take_no_python_hook_below_the_quiet_limit():
    pump, transport, calls = _quiet_hook("sse")
    chunks = [b": first\n\n", *[chunk(c) for c in ("ab", "c", "d", "e", "fgh", "i")], b"data: [DONE]\n\n"]
    for piece in chunks:
        pump.fast.body(piece)  # type: ignore[union-attr]
        pump.fast.flush()  # type: ignore[union-attr]
    pump.fast.end()  # type: ignore[union-attr]
    assert calls == ["Token", "Token", "End"]  # "d" (4 > 3, then 7) and "fgh" (8 > 7)
    assert b"".join(_unframe(transport.writes)) == b"abcdefghi"


async def test_a_hook_that_awaits_mid_read_holds_the_rest_of_it_in_order():
    """A hook awaits at a token read in C with more events after it in the same read: those wait
    for it (in arrival order, the pump's) and the decoder reads them as it would have."""
    gate = asyncio.Event()

    def hook(run, ev):
        return gate.wait() if run.meter.chars == 2 else None

    pump, transport = _pump("text", [hook], [lambda run: (1, math.inf) if run.meter.chars < 2 else (None, math.inf)])
    rest = chunk("a") + chunk("b") + b"event: ping\n" + chunk("c") + b"data: {\"choices\":[{\"delta\":"
    pump.fast.body(b": first\n\n")  # type: ignore[union-attr]
    pump.fast.body(rest)  # type: ignore[union-attr]
    pump.fast.body(b'{"content":"d"}}]}\n\n' + chunk("e") + b"data: [DONE]\n\n")  # type: ignore[union-attr]
    pump.fast.flush()  # type: ignore[union-attr]
    await _release_held(pump, gate)
    assert b"".join(_unframe(transport.writes)) == b"abcde" and pump.run.meter.chars == 5
    assert _state(pump.decoder) == ("", [], 0, b"", 0)


def _hostile_long_line(over: bool) -> list[bytes]:
    size = MAX_LINE_BYTES + 1024 if over else MAX_LINE_BYTES // 2
    opened = chunk("a") + b'data: {"choices":[{"delta":{"content":"'
    closed = b'"}}]}\n\n' + chunk("b") + b"data: [DONE]\n\n"
    return [b": first\n\n", opened, *[b"x" * 1024] * (size // 1024), closed]


@pytest.mark.parametrize("over", [False, True])
async def test_a_data_line_that_never_ends_costs_linear_time_and_breaks_off_at_its_limit(over):
    chunks = _hostile_long_line(over)
    results = []
    for compiled in (True, False):
        pump, transport = _pump("text")
        consumer = pump.fast if compiled else pump
        started = time.monotonic()
        for piece in chunks:
            consumer.body(piece)  # type: ignore[union-attr]
            consumer.flush()  # type: ignore[union-attr]
        consumer.end()  # type: ignore[union-attr]
        pump.detach()
        assert time.monotonic() - started < 2, compiled
        results.append((pump.done.result(), pump.message, pump.run.meter.chars, pump.run.bytes_in,  # type: ignore[union-attr]
                        pump.run.bytes_out, len(b"".join(_unframe(transport.writes)))))
    assert results[0] == results[1]
    if over:
        assert results[0][:3] == ("backend_error", f"a backend event line is over {MAX_LINE_BYTES} bytes", 1)
    else:
        assert results[0][0] == "completed" and results[0][2] == MAX_LINE_BYTES // 2 + 2


async def test_a_data_line_just_over_the_limit_in_one_last_piece_is_the_decoders_error():
    """The line's last piece (with its newline) is not held, so the line may pass the bound there:
    the decoder's own event bound then refuses it, and so does the compiled path."""
    value = b'{"choices":[{"delta":{"content":"' + b"y" * MAX_LINE_BYTES + b'"}}]}'
    chunks = [b": first\n\n", b"data: " + value[:1000], value[1000:] + b"\n\n" + chunk("z")]
    fast, slow = _lockstep("text", chunks)
    assert fast[:5] == slow[:5] and fast[0] == "backend_error" and "over" in fast[1]


HOSTILE = {
    "a data line cut inside a UTF-8 sequence": chunk("Grüße 世界"),  # every split cuts it somewhere
    "invalid UTF-8 and escapes": b'data: {"choices":[{"delta":{"content":"\xff\xfe"}}]}\n\n'
    + b'data: {"choices":[{"delta":{"content":"\\u00e9\\ud83d\\ude00"}}]}\n\n'
    + b'data: {"choices":[{"delta":{"content":"\\ud800x"}}]}\n\n' + chunk("c"),
    "data with no blank line at the end": chunk("a") + b'data: {"choices":[{"delta":{"content":"tail"}}]}\n',
    "a last line without a newline": chunk("a") + b'data: {"choices":[{"delta":{"content":"tail"}}]}',
    "an error event after tokens": chunk("ab") + b"event: error\ndata: model overloaded\n\n" + chunk("zz"),
    "done, then more": chunk("ab") + b"data: [DONE]\n\n" + chunk("cd") + b"junk",
    "odd shapes": b'data: {"choices":[{"delta":{"content":5}}]}\n\ndata: {"choices":["x"]}\n\n'
    + b'data: {"choices":{"0":1}}\n\ndata: []\n\ndata: null\n\ndata\n\ndata:\n\ndata: \n\n'
    + b'data: {"choices":[{"delta":"s","text":"t"}]}\n\ndata: {"choices":[{"text":"u"}],"usage":{}}\n\n'
    + b'data: {"choices":[{"delta":{"content":"v"}},{"delta":{"content":"w"}}]}\n\n'
    + b'DATA: {"choices":[{"delta":{"content":"no"}}]}\n\n',
    "lines of only CR and stray fields": chunk("a") + b"\r\n\r\r\n\r" + chunk("b") + b"event:\n" + chunk("c")
    + b"event: x\n\n" + chunk("d") + b"data:  two spaces\n\n",
    "blank lines split as CR and LF": b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r'
    + b'\ndata: {"choices":[{"delta":{"content":"b"}}]}\n\r\n',
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("output", ["text", "json-array"])
async def test_hostile_event_streams_read_as_the_python_pump_reads_them_at_every_split(case, output):
    for chunks in _split_everywhere(HOSTILE[case]):
        fast, slow = _lockstep(output, [b": first\n\n", *chunks])
        assert fast == slow, chunks


@pytest.mark.parametrize("stop_at", [1, 3, 6])
async def test_a_run_stopped_mid_read_ends_at_the_same_token_on_either_path(stop_at):
    from proxy.policies.base import StopRun

    def hook(run, ev):
        if run.meter.chars >= stop_at:
            raise StopRun("credits_exhausted", "out of credits")

    events = b"".join(chunk(c) for c in "abcdef") + b"data: [DONE]\n\n"
    for chunks in _split_everywhere(events):
        fast, slow = _lockstep("text", [b": first\n\n", *chunks], [hook], [lambda run: (stop_at - 1, math.inf)])
        assert fast == slow and fast[0] == "credits_exhausted", chunks


SSE_CHUNKS = [SSE[i:i + 41] for i in range(0, len(SSE), 41)]


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "workflow-ui"])
async def test_the_gateway_streams_sse_and_charges_the_same_either_way(upstream, gateway, tmp_path, dialect):
    upstream.handle("/sse", lambda request, seen: stream_chunks(request, SSE_CHUNKS, delay=0.002,
                                                                content_type="text/event-stream"))
    results = []
    for compiled in (True, False):
        cfg = _config(upstream.url, compiled, store=f"sqlite:///{tmp_path / f'{compiled}.db'}")
        cfg["limits"] = {"credit_quantum_tokens": 1}
        cfg["backends"]["sse"] = {"url": upstream.url, "protocol": "sse", "connect_timeout_s": 2}
        cfg["flows"].append({"id": "wf_sse", "owner": "acme", "tenant": "t1", "workspace": "w1",
                             "targets": {"Production": {"backend": "sse", "path": "/sse"}}})
        client = await gateway(cfg)
        resp = await open_stream(client, dialect, "wf_sse")
        body = await resp.read()
        if dialect == "workflow-ui":
            assert body.endswith(b"\n\ndata: [DONE]\n\n")
            text = _text("ui", body)
        elif dialect == "profitbase":
            text = "".join(e for e in json.loads(body) if isinstance(e, str))
        else:
            text = body.decode()
        entry = (await settled(client))[0]
        results.append((text, body if dialect != "workflow-ui" else None, entry["credits"], entry["output_tokens"],
                        entry["outcome"]))
    assert results[0] == results[1]
    assert results[0][2:] == (9, 9, "completed")

