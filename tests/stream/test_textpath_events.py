"""The compiled path reading Langflow's events (proxy/stream/textpath.pyx, ``LANGFLOW``): at every
split of an event stream the same bytes, metering, usage and decoder state as the Python pump, and
through the gateway the same text and charge with the compiled path on and off."""

from __future__ import annotations

import asyncio
import json
import math
import time

import aiohttp
import orjson
import pytest

from proxy.protocols import new_decoder
from proxy.stream.pump import Pump
from tests.conftest import base_config, stream_chunks
from tests.policies.test_credits import settled
from tests.stream.test_pump import open_stream
from tests.stream.test_textpath import TextPath, _body, _config, _quiet_hook, _release_held, _split_everywhere, _unframe
from tests.stream.test_textpath import _pump as text_pump
from tests.upstream.hostile import CHUNKED_HEAD, backend_fixture  # noqa: F401 - the `backend` fixture


def frame(event: str, data, *, compact: bool = False, crlf: bool = False) -> bytes:
    body = orjson.dumps({"event": event, "data": data}) if compact else \
        json.dumps({"event": event, "data": data}).encode()  # Langflow's own: ", " and ": ", \\u escapes
    return body + (b"\r\n\r\n" if crlf else b"\n\n")


EVENTS = b"".join([
    frame("vertices_sorted", {"ids": ["a", "b"]}),
    frame("add_message", {"id": "u1", "sender": "User", "text": "question?"}),  # the echoed input
    frame("token", {"chunk": "Grüße", "id": "m1", "timestamp": "t"}),
    frame("token", {"chunk": ", 世界", "id": "m1"}, compact=True),
    frame("token", {"chunk": "", "id": "m1"}),  # nothing generated
    b"not json at all\n\n",
    frame("token", {"chunk": "! tokens…", "id": "m1"}, crlf=True),
    frame("token", {"chunk": "x", "id": 7}),  # a number id, as str() makes it
    frame("add_message", {"id": "m1", "sender": "Machine", "text": "Grüße, 世界! tokens…and more",
                          "properties": {"usage": {"input_tokens": 3, "output_tokens": 9}}}),
    frame("token", {"chunk": 5, "id": "m2"}),  # not a string: no text
    frame("end", {"result": {"outputs": []}}),
])
GENERATED = "Grüße, 世界! tokens…" + "x" + "and more"


def _pump(output: str, hooks=(), quiet=(), protocol: str = "langflow"):
    return text_pump(output, hooks, quiet, protocol)


def _run(pump: Pump, chunks, *, compiled: bool) -> None:
    consumer = pump.fast if compiled else pump
    for chunk in chunks:
        consumer.body(chunk)  # type: ignore[union-attr]
        consumer.flush()  # type: ignore[union-attr]
    consumer.end()  # type: ignore[union-attr]
    pump.detach()


def _text(output: str, writes: list[bytes]) -> str:
    body = b"".join(_unframe(writes))
    if output == "ui":  # SSE parts (no prologue here: the handler writes it; the closing parts end a completed run)
        parts = [json.loads(event.removeprefix(b"data: ")) for event in body.split(b"\n\n")
                 if event and event != b"data: [DONE]"]
        assert parts[0] == {"type": "text-start", "id": "text-0"}
        return "".join(p["delta"] for p in parts[1:] if p["type"] == "text-delta")
    if output == "text":
        return body.decode()
    # (no prologue here; a completed run's closing "]" is the pump's)
    return "".join(json.loads(b"[" + body + (b"" if body.endswith(b"]") else b"]")))


async def test_the_compiled_path_takes_langflow_events_transcoded_only():
    pump, _ = _pump("text")
    assert isinstance(pump.fast, TextPath)
    assert not TextPath.takes(new_decoder("langflow"), True)  # passed through: the Python pump's
    assert not TextPath.takes(new_decoder("ndjson"), False)


@pytest.mark.parametrize("output", ["text", "json-array", "ui"])
async def test_every_split_of_an_event_stream_reads_as_the_python_pump_reads_it(output):
    for chunks in _split_everywhere(EVENTS):
        chunks = [frame("vertices_sorted", {}), *chunks]  # (the first piece is the pump's on either path)
        fast, fast_t = _pump(output)
        _run(fast, chunks, compiled=True)
        slow, slow_t = _pump(output)
        _run(slow, chunks, compiled=False)
        for pump in (fast, slow):
            assert pump.done.result() == "completed", chunks  # type: ignore[union-attr]
        assert fast.run.meter == slow.run.meter, chunks
        assert fast.run.meter.chars == len(GENERATED) and fast.run.meter.reported_output == 9
        assert (fast.run.bytes_in, fast.run.bytes_out) == (slow.run.bytes_in, slow.run.bytes_out), chunks
        assert fast.decoder.emitted == slow.decoder.emitted == {"m1": len("Grüße, 世界! tokens…and more"), "7": 1}
        assert _text(output, fast_t.writes) == _text(output, slow_t.writes) == GENERATED, chunks
        assert _body(fast, fast_t) == _body(slow, slow_t), chunks


async def test_token_events_take_no_python_hook_below_the_quiet_limit():
    pump, transport, calls = _quiet_hook("langflow")
    tokens = [frame("token", {"chunk": c, "id": "m"}) for c in ("ab", "c", "d", "e", "fgh", "i")]
    _run(pump, [frame("vertices_sorted", {}), *tokens, frame("end", {"result": {}})], compiled=True)
    # the first chunk (no events) is the pump's; then only tokens past the limit and the end
    assert calls == ["Token", "Token", "End"]  # "d" (4 > 3, then 7) and "fgh" (8 > 7)
    assert _text("text", transport.writes) == "abcdefghi"


async def test_a_hook_that_awaits_mid_chunk_holds_the_rest_of_it_in_order():
    gate = asyncio.Event()

    def hook(run, ev):
        return gate.wait() if run.meter.chars == 2 else None

    pump, transport = _pump("text", [hook], [lambda run: (1, math.inf) if run.meter.chars < 2 else (None, math.inf)])
    first = frame("vertices_sorted", {})
    rest = b"".join(frame("token", {"chunk": c, "id": "m"}) for c in ("a", "b", "c", "d"))
    pump.fast.body(first)  # type: ignore[union-attr]
    pump.fast.body(rest[:-7] + b"")  # type: ignore[union-attr]  (the last event split in two reads)
    pump.fast.body(rest[-7:] + frame("end", {"result": {}}))  # type: ignore[union-attr]
    pump.fast.flush()  # type: ignore[union-attr]
    await _release_held(pump, gate)
    assert _text("text", transport.writes) == "abcd" and pump.run.meter.chars == 4


async def test_an_error_event_ends_the_run_as_a_backend_error():
    pump, transport = _pump("text")
    _run(pump, [frame("vertices_sorted", {}), frame("token", {"chunk": "ab", "id": "m"}),
                frame("error", {"error": "model overloaded"}) + frame("token", {"chunk": "zz", "id": "m"})],
         compiled=True)
    assert pump.done.result() == "backend_error" and pump.message == "model overloaded"  # type: ignore[union-attr]
    assert _text("text", transport.writes) == "ab"


LF_CHUNKS = [EVENTS[i:i + 37] for i in range(0, len(EVENTS), 37)]


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "workflow-ui"])
async def test_the_gateway_streams_langflow_events_and_charges_the_same_either_way(upstream, gateway, tmp_path,
                                                                                   dialect):
    upstream.handle("/lf", lambda request, seen: stream_chunks(request, LF_CHUNKS, delay=0.002))
    results = []
    for compiled in (True, False):
        cfg = _config(upstream.url, compiled, store=f"sqlite:///{tmp_path / f'{compiled}.db'}")
        cfg["limits"] = {"credit_quantum_tokens": 1}
        client = await gateway(cfg)
        resp = await open_stream(client, dialect, "wf_lf")
        body = await resp.read()
        if dialect == "workflow-ui":
            assert body.endswith(b"\n\ndata: [DONE]\n\n")
            parts = [json.loads(e[6:]) for e in body.split(b"\n\n")[:-2]]
            text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
            assert parts[-1]["messageMetadata"]["usage"] == {"inputTokens": 3, "outputTokens": 9, "totalTokens": 12}
        else:
            text = "".join(json.loads(body)) if dialect == "profitbase" else body.decode()
        entry = (await settled(client))[0]
        results.append((text, entry["credits"], entry["output_tokens"], entry["outcome"]))
    assert results[0] == results[1] == (GENERATED, 9, 9, "completed")


def test_base_config_has_the_langflow_flow():
    assert any(f["id"] == "wf_lf" for f in base_config("http://x")["flows"])


@pytest.mark.parametrize("over", [False, True])
async def test_a_line_that_never_ends_costs_linear_time_and_breaks_off_at_its_limit(over):
    """A hostile backend's endless event line, in 1 KiB pieces: held without being copied per
    piece, on both paths (a token of half the limit), and past the limit the run's backend error."""
    import time

    from proxy.protocols._lines import MAX_LINE_BYTES

    size = MAX_LINE_BYTES + 1024 if over else MAX_LINE_BYTES // 2
    piece = b"x" * 1024
    opened = frame("token", {"chunk": "a", "id": "m"}) + b'{"event":"token","data":{"chunk":"'
    closed = b'"}}\n\n' + frame("token", {"chunk": "b", "id": "m"}) + frame("end", {"result": {}})
    chunks = [frame("vertices_sorted", {}), opened, *[piece] * (size // len(piece)), closed]
    results = []
    for compiled in (True, False):
        pump, transport = _pump("text")
        started = time.monotonic()
        _run(pump, chunks, compiled=compiled)
        assert time.monotonic() - started < 2, compiled
        results.append((pump.done.result(), pump.message, pump.run.meter.chars, pump.run.bytes_in,  # type: ignore[union-attr]
                        pump.run.bytes_out, len(_text("text", transport.writes)), pump.decoder.pending))
    assert results[0] == results[1]
    if over:
        assert results[0][:3] == ("backend_error", f"a backend event line is over {MAX_LINE_BYTES} bytes", 1)
    else:
        assert results[0][0] == "completed" and results[0][2] == size + 2


def _token(chunk, **data) -> bytes:
    return frame("token", {"chunk": chunk, **data})


HOSTILE_EVENTS = {
    "invalid UTF-8 and escapes": _token("ab", id="m") + b'{"event": "token", "data": {"chunk": "\xff\xfe"}}\n\n'
    + b'{"event":"token","data":{"chunk":"\\u00e9\\ud83d\\ude00","id":"m"}}\n\n'
    + b'{"event":"token","data":{"chunk":"\\ud800x","id":"m"}}\n\n' + _token("c", id="m"),
    "lines of only CR": _token("a", id="m") + b"\r\n\r\r\n\r" + _token("b", id="m"),
    "odd token shapes": _token("a", id="m", x=[1]) + frame("token", {"chunk": ["a"]}) + _token("q")
    + _token("r", id={"a": 1}) + _token("s", id=None) + b'{"event":["token"],"data":{"chunk":"t"}}\n\n[1]\n\nnull\n\n',
    "an error after tokens": _token("ab", id="m") + _token("cd", id="m") + frame("error", {"error": "boom"})
    + _token("zz", id="m"),
    "end, then more": _token("ab", id="m") + frame("end", {"result": {}}) + _token("cd", id="m") + b"junk",
    "a last line without a newline": _token("ab", id="m") + b'{"event":"token","data":{"chunk":"tail"}}',
}


@pytest.mark.parametrize("case", list(HOSTILE_EVENTS))
@pytest.mark.parametrize("output", ["text", "json-array"])
async def test_hostile_event_streams_read_as_the_python_pump_reads_them_at_every_split(case, output):
    for chunks in _split_everywhere(HOSTILE_EVENTS[case]):
        chunks = [frame("vertices_sorted", {}), *chunks]  # (the first piece is the pump's on either path)
        seen = []
        for compiled in (True, False):
            pump, transport = _pump(output)
            _run(pump, chunks, compiled=compiled)
            outcome = pump.done.result()  # type: ignore[union-attr]
            seen.append((outcome, pump.message, pump.run.meter.chars, pump.run.bytes_in, pump.run.bytes_out,
                         _text(output, transport.writes), pump.decoder.emitted if outcome == "completed" else None))
        assert seen[0] == seen[1], chunks


@pytest.mark.parametrize("stop_at", [1, 3, 6])
async def test_a_run_stopped_mid_read_ends_at_the_same_token_on_either_path(stop_at):
    """A hook that stops the run (credits cut) at a token with more lines after it in the same
    read: at every split the same outcome, text, metering and bytes (quiet limits honest)."""
    from proxy.policies.base import StopRun

    def hook(run, ev):
        if run.meter.chars >= stop_at:
            raise StopRun("credits_exhausted", "out of credits")

    events = b"".join(_token(c, id="m") for c in "abcdef") + frame("end", {"result": {}})
    for chunks in _split_everywhere(events):
        chunks = [frame("vertices_sorted", {}), *chunks]
        seen = []
        for compiled in (True, False):
            pump, transport = _pump("text", [hook], [lambda run: (stop_at - 1, math.inf)])
            _run(pump, chunks, compiled=compiled)
            seen.append((pump.done.result(), pump.run.meter.chars, pump.run.bytes_in,  # type: ignore[union-attr]
                         pump.run.bytes_out, _text("text", transport.writes)))
        assert seen[0] == seen[1] and seen[0][0] == "credits_exhausted", chunks


def _endless_tokens(n: int) -> list:
    piece = frame("token", {"chunk": "abcd", "id": "m"})
    return [CHUNKED_HEAD + b"%x\r\n%s\r\n" % (len(piece), piece)] + [
        p for _ in range(n) for p in (0.02, b"%x\r\n%s\r\n" % (len(piece), piece))]


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("dialect", ["workflow", "profitbase"])
async def test_an_endless_event_stream_ends_at_the_run_cap_and_is_charged_for_what_was_read(backend, gateway, tmp_path,
                                                                                             compiled, dialect):
    b = await backend(lambda n: _endless_tokens(1000))
    cfg = _config(b.url, compiled, store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["limits"] = {"credit_quantum_tokens": 1}
    cfg["flows"][1]["max_duration_s"] = 0.5
    client = await gateway(cfg)
    started = time.monotonic()
    resp = await open_stream(client, dialect, "wf_lf")
    with pytest.raises(aiohttp.ClientPayloadError):  # text and JSON array: no clean end
        await asyncio.wait_for(resp.read(), 5)
    assert time.monotonic() - started < 2
    await asyncio.wait_for(b.reset.wait(), 5)  # the backend connection was dropped
    entry = (await settled(client))[0]
    assert entry["outcome"] == "deadline" and entry["credits"] == entry["output_tokens"] > 0


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_a_client_leaving_an_event_stream_drops_the_backend(backend, gateway, tmp_path, compiled):
    b = await backend(lambda n: _endless_tokens(1000))
    client = await gateway(_config(b.url, compiled, store=f"sqlite:///{tmp_path / 'fg.db'}"))
    resp = await open_stream(client, "workflow", "wf_lf")
    assert await resp.content.readany()
    resp.close()
    await asyncio.wait_for(b.reset.wait(), 5)
    assert (await settled(client))[0]["outcome"] == "client_disconnected"


# --- the AI SDK's data stream (``ai-sdk``): its text parts read in C, every other part by the decoder ---

AI_SDK = b"".join([
    b'f:{"messageId":"msg-1"}\n',
    b'0:"Gr\\u00fc\\u00dfe"\n',
    b'0:", \xe4\xb8\x96\xe7\x95\x8c"\r\n',
    b'0:""\n',  # nothing generated
    b'0:42\n',  # not text
    b'0:not json\n',
    b'2:[{"step":1}]\n',  # data: an item, no text of its own
    b'garbage without a colon\n',
    b'0:"! tokens\xe2\x80\xa6"\n',
    b'e:{"finishReason":"stop","usage":{"promptTokens":3,"completionTokens":9}}\n',
    b'd:{"finishReason":"stop","usage":{"promptTokens":3,"completionTokens":9}}\n',
])


@pytest.mark.parametrize("output", ["text", "json-array"])
async def test_every_split_of_an_ai_sdk_stream_reads_as_the_python_pump_reads_it(output):
    for chunks in _split_everywhere(AI_SDK):
        chunks = [b'f:{"messageId":"msg-0"}\n', *chunks]  # (the first piece is the pump's on either path)
        fast, fast_t = _pump(output, protocol="ai-sdk")
        assert isinstance(fast.fast, TextPath)
        _run(fast, chunks, compiled=True)
        slow, slow_t = _pump(output, protocol="ai-sdk")
        _run(slow, chunks, compiled=False)
        for pump in (fast, slow):
            assert pump.done.result() == "completed", chunks  # type: ignore[union-attr]
        assert fast.run.meter == slow.run.meter, chunks
        assert fast.run.meter.chars == len("Grüße, 世界! tokens…") and fast.run.meter.reported_output == 9
        assert (fast.run.bytes_in, fast.run.bytes_out) == (slow.run.bytes_in, slow.run.bytes_out), chunks
        assert _body(fast, fast_t) == _body(slow, slow_t), chunks
