"""The compiled text path (proxy/stream/textpath.pyx): the same bytes, metering and hook calls as the
Python pump, chunk by chunk and through the gateway.

Where it was not built (no C compiler at install) these tests skip, unless REQUIRE_NATIVE=1 (CI),
where its absence is a failure."""

from __future__ import annotations

import asyncio
import json
import math
import os
from types import SimpleNamespace

import pytest

from proxy.context import GATEWAY
from proxy.env import Env
from proxy.policies import Chain, StopRun
from proxy.protocols import new_decoder, new_encoder
from proxy.run import Run
from proxy.stream.pump import Pump, TextPath
from proxy.stream.sinks import ClientSink
from tests.conftest import base_config, stream_chunks
from tests.policies.test_credits import settled
from tests.stream.test_pump import open_stream
from tests.upstream.hostile import Backend

if TextPath is None:
    if os.environ.get("REQUIRE_NATIVE") == "1":
        raise RuntimeError("REQUIRE_NATIVE=1 but proxy.stream.textpath is not built (make install compiles it)")
    pytest.skip("proxy.stream.textpath is not built (no C compiler at install): the Python pump serves every chunk",
                allow_module_level=True)

TEXT = "Grüße, 世界! tokens…"


def _config(url: str, compiled: bool = True, **overrides) -> dict:
    cfg = base_config(url, **overrides)
    cfg["server"] = {**cfg["server"], "compiled_text_path": compiled}
    return cfg


BOTH_PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])


class _Upstream:
    headers: dict[str, str] = {}

    def __init__(self) -> None:
        self.paused = False

    def attach(self, consumer) -> None: ...

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, data) -> None:
        self.writes.append(b"".join(data))


class _Conn:
    writing_paused = False
    joins_eof = True

    async def drain(self) -> None:
        self.writing_paused = False


def _pump(output: str, hooks=(), quiet=(), protocol: str = "text"):
    """A streaming pump on a fake transport, its compiled path made as Pump.start makes it (a
    ``protocol`` backend's body; passed through where the output is the same format)."""
    run = Run(request=None, dialect="workflow", route="stream", flow_ref="wf", env=Env.Production,  # type: ignore[arg-type]
              stream=True, body=b"")
    run.flow = SimpleNamespace(id="wf")  # type: ignore[assignment]
    pump = Pump(run, _Upstream(), new_decoder(protocol), new_encoder(output, run), output == protocol,  # type: ignore[arg-type]
                Chain.of_hooks(list(hooks), list(quiet)))
    transport = _Transport()
    pump.sink = ClientSink(transport, True, _Conn())
    pump.resp = object()  # type: ignore[assignment]
    pump.write = pump.sink.out.append
    pump.fast = pump.fast_path()
    assert isinstance(pump.fast, TextPath)
    pump.done = asyncio.get_running_loop().create_future()
    return pump, transport


def _unframe(writes: list[bytes]) -> list[bytes]:
    pieces = []
    for w in writes:
        while w:
            size, _, rest = w.partition(b"\r\n")
            n = int(size, 16)
            pieces.append(rest[:n])
            assert rest[n:n + 2] == b"\r\n"
            w = rest[n + 2:]
    return pieces


def _feed(pump: Pump, chunks) -> None:
    for chunk in chunks:
        pump.fast.body(chunk)  # type: ignore[union-attr]
        pump.fast.flush()  # type: ignore[union-attr]


def _split_everywhere(data: bytes):
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i:i + 1] for i in range(len(data))]


def _quiet_hook(protocol: str):
    """A pump whose one hook records each event it sees and then sets the quiet limit 3 characters
    further (the compiled path must call it only past the limit); returns (pump, transport, calls)."""
    calls: list[str] = []
    limit = {"chars": 3}

    def hook(run, ev):
        calls.append(type(ev).__name__)
        limit["chars"] = run.meter.chars + 3

    pump, transport = _pump("text", [hook], [lambda run: (limit["chars"], math.inf)], protocol)
    return pump, transport, calls


async def _release_held(pump, gate) -> None:
    """A pump holding pieces behind an awaiting hook: the hook's gate opens, the body ends, the run
    completes and the pump stops."""
    assert pump.upstream.paused and pump.held is not None
    gate.set()
    pump.fast.end()
    assert await asyncio.wait_for(pump.done, 5) == "completed"
    pump.flush()
    pump.detach()


def _body(pump, transport) -> bytes:
    """What the client got, its run's own job id (in a completed UI stream's finish part) made common."""
    return b"".join(_unframe(transport.writes)).replace(pump.run.job_id.encode(), b"JOB")


@pytest.mark.parametrize("output", ["text", "json-array", "langflow", "ui"])
async def test_every_split_writes_and_meters_what_the_python_pump_does(output):
    body = TEXT.encode()
    for chunks in _split_everywhere(body):
        fast, fast_t = _pump(output)
        _feed(fast, chunks)
        fast.detach()  # the compiled path's counts reach the run at the latest here
        slow, slow_t = _pump(output)
        for chunk in chunks:
            slow.body(chunk)
            slow.flush()
        assert fast.run.meter.chars == slow.run.meter.chars == len(TEXT), chunks
        assert (fast.run.bytes_in, fast.run.bytes_out) == (slow.run.bytes_in, slow.run.bytes_out), chunks
        got, want = _unframe(fast_t.writes), _unframe(slow_t.writes)
        if output == "langflow":  # frames carry a timestamp: compare their text
            got = [json.loads(p)["data"]["chunk"] for p in got]
            want = [json.loads(p)["data"]["chunk"] for p in want]
        assert got == want, chunks
        assert fast.decoder.rest == b"" and not fast.done.done()  # type: ignore[union-attr]


async def test_each_chunk_is_framed_and_counted():
    pump, transport = _pump("text")
    _feed(pump, [b"ab", b"cd", b"e" * 3000])
    gap = pump.gap
    pump.detach()
    assert transport.writes[:2] == [b"2\r\nab\r\n", b"2\r\ncd\r\n"]  # one write per chunk
    assert _unframe(transport.writes) == [b"ab", b"cd", b"e" * 3000]  # a large piece: the sink's writelines
    assert (pump.run.bytes_in, pump.run.bytes_out, pump.run.meter.chars) == (3004, 3004, 3004)
    assert sum(gap.counts) >= 2 and gap.sum > 0  # the gaps after the first chunk, counted in C


async def test_hooks_run_only_past_their_quiet_limits():
    calls: list[tuple[int, str]] = []
    limit = {"chars": 4}

    def hook(run, ev):
        calls.append((run.meter.chars, ev.text))
        limit["chars"] = run.meter.chars + 4

    pump, transport = _pump("text", [hook], [lambda run: (limit["chars"], math.inf)])
    _feed(pump, [b"ab", b"cd", b"ef", b"gh", b"ijklm", b"n"])
    # the first chunk is the pump's own (every hook runs); then only chunks past the limit, which
    # see the run's meter with every chunk before them counted
    assert calls == [(2, "ab"), (8, "gh"), (13, "ijklm")]
    assert pump.run.meter.chars == 13  # the last chunk's count is still the compiled path's
    pump.detach()
    assert b"".join(_unframe(transport.writes)) == b"abcdefghijklmn" and pump.run.meter.chars == 14


async def test_a_due_time_limit_calls_the_hooks_every_chunk():
    calls: list[str] = []
    pump, _ = _pump("text", [lambda run, ev: calls.append(ev.text)], [lambda run: (None, 0.0)])
    _feed(pump, [b"a", b"b", b"c"])
    assert calls == ["a", "b", "c"]


async def test_a_hook_that_stops_the_run_on_the_compiled_path():
    def hook(run, ev):
        if run.meter.chars > 2:
            raise StopRun("credits_cut", "out of credits")

    pump, transport = _pump("text", [hook], [lambda run: (2, math.inf)])
    _feed(pump, [b"ab", b"cd", b"ef"])
    assert await asyncio.wait_for(pump.done, 5) == "credits_cut"  # type: ignore[arg-type]
    # as on the Python path: a passed-through chunk goes out as it came, the run ends after it
    assert _unframe(transport.writes) == [b"ab", b"cd"] and pump.run.meter.chars == 4


async def test_a_hook_that_awaits_holds_later_chunks_in_order():
    gate = asyncio.Event()

    def hook(run, ev):
        if run.meter.chars == 4:
            return gate.wait()
        return None

    pump, transport = _pump("text", [hook], [lambda run: (3, math.inf) if run.meter.chars < 4 else (None, math.inf)])
    _feed(pump, [b"ab", b"cd", b"ef", b"gh"])
    assert pump.upstream.paused and _unframe(transport.writes) == [b"ab"]  # type: ignore[attr-defined]
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert b"".join(_unframe(transport.writes)) == b"abcdefgh" and not pump.upstream.paused  # type: ignore[attr-defined]
    assert pump.run.meter.chars == 8


async def test_a_client_above_its_high_water_mark_pauses_the_upstream():
    pump, transport = _pump("text")
    _feed(pump, [b"ab"])
    pump.sink.conn.writing_paused = True  # type: ignore[union-attr]
    _feed(pump, [b"cd"])
    assert pump.draining and pump.upstream.paused  # type: ignore[attr-defined]
    for _ in range(5):
        await asyncio.sleep(0)
    assert not pump.draining and not pump.upstream.paused  # type: ignore[attr-defined]
    assert _unframe(transport.writes) == [b"ab", b"cd"]


async def test_an_ended_pump_takes_nothing_more():
    pump, transport = _pump("text")
    _feed(pump, [b"ab"])
    pump.detach()
    pump.body(b"cd")
    assert _unframe(transport.writes) == [b"ab"] and pump.run.bytes_in == 2


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "langflow", "workflow-ui"])
async def test_the_gateway_streams_and_charges_the_same_either_way(upstream, gateway, tmp_path, dialect):
    """Through real sockets with credits on SQLite (a 1-token quantum: the hold grows at every
    token), with the compiled path on and off: same text, same charge."""
    chunks = [TEXT.encode()[i:i + 3] for i in range(0, len(TEXT.encode()), 3)]
    upstream.handle("/text", lambda request, seen: stream_chunks(request, chunks, delay=0.002))
    results = []
    for compiled in (True, False):
        cfg = _config(upstream.url, compiled, store=f"sqlite:///{tmp_path / f'{compiled}.db'}")
        cfg["limits"] = {"credit_quantum_tokens": 1}
        client = await gateway(cfg)
        chains = client.app[GATEWAY].chains
        assert sorted(k for k, c in chains.items() if c.quiet is not None) == (["key", "token"] if compiled else [])
        resp = await open_stream(client, dialect, "wf_text")
        body = await resp.read()
        if dialect == "profitbase":
            text = "".join(json.loads(body))
        elif dialect == "workflow":
            text = body.decode()
        elif dialect == "workflow-ui":
            parts = [json.loads(e[6:]) for e in body.split(b"\n\n") if e and e != b"data: [DONE]"]
            assert parts[-1]["type"] == "finish"
            text = "".join(p["delta"] for p in parts if p["type"] == "text-delta")
        else:
            frames = [json.loads(line) for line in body.split(b"\n") if line.strip()]
            text = "".join(f["data"]["chunk"] for f in frames if f["event"] == "token")
        entry = (await settled(client))[0]
        results.append((text, entry["credits"], entry["output_tokens"], entry["outcome"]))
    assert results[0] == results[1] == (TEXT, -(-len(TEXT) // 4), -(-len(TEXT) // 4), "completed")


# --- the backend's chunked body, read by the compiled ChunkedBody (proxy.upstream.chunked) ---

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
WORDS = [w.encode() for w in ("Grüße", ", ", "世界", "! ", "tokens…")]
CHUNKED = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(w), w) for w in WORDS) + b"0\r\nx-trailer: t\r\n\r\n"


@pytest.fixture
async def raw_backend():
    backend = Backend(lambda n: [HEAD + CHUNKED], gap=0.003)  # each piece its own read on the gateway's side
    server = await asyncio.start_server(backend.serve, "127.0.0.1", 0)
    backend.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]
    yield backend
    server.close()


async def _text(client) -> tuple[str, str]:
    resp = await open_stream(client, "profitbase", "wf_text")
    body = await resp.read()
    return "".join(json.loads(body)), resp.headers["flow-job-id"]


async def test_a_chunked_body_split_anywhere_reads_the_same_and_keeps_the_connection(raw_backend, gateway):
    """Cut at every byte from the head's blank line (split across two reads) to the body's end,
    chunk extensions and a trailer: the same text every time, all on one kept-alive connection."""
    full = HEAD + CHUNKED
    client = await gateway(base_config(raw_backend.url))
    want = b"".join(WORDS).decode()
    for cut in range(len(HEAD) - 5, len(full)):
        raw_backend.script = lambda n, cut=cut: [full[:cut], full[cut:]]
        assert (await _text(client))[0] == want, cut
    assert raw_backend.connections == 1


@BOTH_PATHS
async def test_a_malformed_chunk_breaks_the_stream_and_drops_the_connection(raw_backend, gateway, compiled):
    raw_backend.script = lambda n: [HEAD + b"5\r\nhello\r\n", b"zz\r\nworld\r\n0\r\n\r\n"] if n == 1 else \
        [HEAD + CHUNKED]
    client = await gateway(_config(raw_backend.url, compiled))
    resp = await open_stream(client, "profitbase", "wf_text")
    with pytest.raises(Exception):  # noqa: B017 - aiohttp's incomplete-payload error: the body broke off
        await resp.read()
    assert (await _text(client))[0] == b"".join(WORDS).decode()
    assert raw_backend.connections == 2  # the first connection was not reused


@BOTH_PATHS
async def test_bytes_after_the_body_keep_the_connection_from_reuse(raw_backend, gateway, compiled):
    raw_backend.script = lambda n: [HEAD + CHUNKED + b"HTTP/1.1 200 OK\r\n"] if n == 1 else [HEAD + CHUNKED]
    client = await gateway(_config(raw_backend.url, compiled))
    for _ in range(2):
        assert (await _text(client))[0] == b"".join(WORDS).decode()
    assert raw_backend.connections == 2


@BOTH_PATHS
async def test_a_backend_closing_mid_body_breaks_the_stream(raw_backend, gateway, tmp_path, compiled):
    raw_backend.script = lambda n: [HEAD + b"5\r\nhello\r\n", None]
    cfg = _config(raw_backend.url, compiled, store=f"sqlite:///{tmp_path / 'fg.db'}")
    client = await gateway(cfg)
    resp = await open_stream(client, "profitbase", "wf_text")
    with pytest.raises(Exception):  # noqa: B017 - the client sees an incomplete body
        await resp.read()
    entry = (await settled(client))[0]
    assert entry["outcome"] == "backend_error" and entry["output_tokens"] == 2  # "hello": 5 chars


@pytest.mark.parametrize("pieces,want", [
    ([b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + CHUNKED], b"".join(WORDS).decode()),  # an interim head first
    ([b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD[:-1], HEAD[-1:] + CHUNKED], b"".join(WORDS).decode()),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"], "hello"),  # a length: the parser's as before
])
@BOTH_PATHS
async def test_heads_interim_answers_and_lengths_around_the_compiled_body(raw_backend, gateway, pieces, want,
                                                                          compiled):
    raw_backend.script = lambda n: pieces
    client = await gateway(_config(raw_backend.url, compiled))
    for _ in range(2):
        assert (await _text(client))[0] == want
    assert raw_backend.connections == 1


async def test_counts_reach_the_run_at_the_end_and_nothing_is_taken_after_it():
    """The compiled path keeps its counts in C between hand-overs: a run ended from elsewhere (a
    task, the handler) stops it taking chunks at once, and detach() adds its counts to the run."""
    pump, transport = _pump("text")
    _feed(pump, [b"ab", b"cd", b"ef"])
    assert pump.run.bytes_in == 2  # only the first chunk, the pump's own, so far
    pump._end("client_disconnected")  # as the drain task does when the client is gone
    _feed(pump, [b"gh"])
    assert _unframe(transport.writes) == [b"ab", b"cd", b"ef"]
    gap = pump.gap
    pump.detach()
    assert (pump.run.bytes_in, pump.run.bytes_out, pump.run.meter.chars) == (6, 6, 6)
    assert sum(gap.counts) >= 2


@pytest.mark.parametrize("flow,compiled", [("wf_text", True), ("wf_lf", True)])
async def test_the_ui_stream_takes_the_compiled_path_for_a_text_backend(upstream, gateway, monkeypatch, flow, compiled):
    """``?protocol=ui`` over a text backend, and over Langflow's events (transcoded): the UI
    encoder's ``encode_text`` frames each piece of text from the compiled path."""
    made = []
    fast_path = Pump.fast_path
    monkeypatch.setattr(Pump, "fast_path", lambda self: made.append(fast_path(self)) or made[-1])
    upstream.handle("/text", lambda request, seen: stream_chunks(request, ["ab", "cd"], delay=0.01))
    upstream.handle("/lf", lambda request, seen: stream_chunks(request, [
        b'{"event":"token","data":{"chunk":"abcd","id":"m"}}\n\n', b'{"event":"end","data":{}}\n\n']))
    client = await gateway(_config(upstream.url))
    body = await (await open_stream(client, "workflow-ui", flow)).read()
    assert body.endswith(b"data: [DONE]\n\n") and b'"type":"finish"' in body
    assert len(made) == 1 and isinstance(made[0], TextPath) is compiled


@pytest.mark.parametrize("compiled", [True, False])
async def test_the_response_head_leaves_with_the_first_bytes_in_one_write(compiled):
    """The front's head waits in the sink for the first flush of the same step: a backend body that
    came with its head reaches the client in one write with it (not two), on either path; then the
    compiled path writes alone again."""
    pump, transport = _pump("text")
    pump.sink.head = b"HTTP/1.1 200 OK\r\n\r\n"
    pump.fast = pump.fast_path()  # (made after the head, as Pump.start makes it)
    consumer = pump.fast if compiled else pump
    consumer.body(b"ab")
    consumer.flush()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n2\r\nab\r\n"] and pump.sink.head is None
    consumer.body(b"cd")
    consumer.flush()
    assert transport.writes[1:] == [b"2\r\ncd\r\n"]


async def test_a_head_with_nothing_after_it_leaves_alone_and_once():
    pump, transport = _pump("text")
    pump.sink.head = b"HTTP/1.1 200 OK\r\n\r\n"
    pump.sink.flush()
    pump.sink.flush()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]
    pump.sink.head = b"H\r\n\r\n"  # and a stream that ends before any body: head and terminator in one write
    await pump.sink.end()
    assert transport.writes[1:] == [b"H\r\n\r\n0\r\n\r\n"]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("output", ["text", "json-array"])
async def test_a_body_that_ends_in_the_read_of_its_last_bytes_ends_the_stream_in_that_write(compiled, output):
    """As the chunked reader calls them (pieces, end, then the read's flush): the head, the pieces,
    the encoder's closing bytes and the chunked terminator leave in one write; the handler's
    finish() then writes nothing more."""
    from proxy.run import COMPLETED
    from proxy.stream.ending import finish

    pump, transport = _pump(output)
    pump.sink.head = b"H\r\n\r\n"
    pump.fast = pump.fast_path()
    consumer = pump.fast if compiled else pump
    for piece in (b"ab", b"cd"):
        consumer.body(piece)
    consumer.end()
    consumer.flush()
    assert pump.done.result() == COMPLETED and pump.sink.ended
    assert len(transport.writes) == 1 and transport.writes[0].startswith(b"H\r\n\r\n")
    assert transport.writes[0].endswith(b"0\r\n\r\n")
    body = b"".join(_unframe([transport.writes[0][len(b"H\r\n\r\n"):]]))
    assert body == (b"abcd" if output == "text" else b'"ab","cd"]')
    await finish(pump, COMPLETED)
    assert len(transport.writes) == 1
