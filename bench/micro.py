"""CPU of the pump's per-chunk path alone, in-process: one 21-byte line from a text backend,
passed through (workflow), transcoded to a JSON array (profitbase) and to the AI SDK UI message
stream (workflow with ``?protocol=ui``), and the same line as a Langflow ``token`` event and as an
SSE event holding an OpenAI chat chunk, each transcoded to the workflow route's text; then a line
the compiled path hands to its decoder (an AI SDK data part, ``2:``) beside the Python pump
reading an NDJSON line of the same value (the measurement that keeps NDJSON on the Python pump:
``proxy/stream/textpath.pyx``); with the credit check on and the socket write stubbed;
through the Python pump (``Pump.body`` + ``Pump.flush``) and through the compiled path (the
chunked-body reader's ``data_received`` with the piece in its HTTP chunk framing, as the socket
delivers it, then ``TextPath``). A hot-cache figure: under load the same code runs colder.

Run: python -m bench.micro
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

from proxy.env import Env
from proxy.policies import Chain
from proxy.policies.credits import Credits, RunHold
from proxy.protocols import new_decoder, new_encoder
from proxy.run import Run
from proxy.stream.pump import Pump, TextPath
from proxy.stream.sinks import ClientSink
from proxy.upstream.connection import ChunkedBody

from .common import no_options

LINE = b"L12:123456789012345;\n"
EVENT = json.dumps({"event": "token", "data": {"chunk": LINE.decode(), "id": "msg-1",
                                               "timestamp": "2026-12-01T00:00:00.000000Z"}}).encode() + b"\n\n"
SSE_EVENT = b"data: " + json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "delta": {"content": LINE.decode()}, "logprobs": None, "finish_reason": None}]},
    separators=(",", ":")).encode() + b"\n\n"
ITEM = json.dumps({"step": 1, "text": LINE.decode()}, separators=(",", ":")).encode()
LINES = {"text": LINE, "langflow": EVENT, "sse": SSE_EVENT, "ai-sdk": b"2:[" + ITEM + b"]\n", "ndjson": ITEM + b"\n"}


class _Upstream:
    headers: dict[str, str] = {}

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class _Transport:
    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None: ...

    def writelines(self, data) -> None: ...


class _Conn:
    transport = SimpleNamespace(set_protocol=lambda protocol: None)
    parser = SimpleNamespace(should_keep_alive=lambda: True)
    failed = None


async def per_chunk_us(output: str, compiled: bool = False, n: int = 200_000, protocol: str = "text") -> float:
    line = LINES[protocol]
    run = Run(request=None, dialect="workflow", route="stream", flow_ref="wf", env=Env.Production,  # type: ignore[arg-type]
              stream=True, body=b"")
    run.flow = SimpleNamespace(id="wf_lines")  # type: ignore[assignment]
    run.extra["credits"] = RunHold("acct", 1000, 1000, 10**9, False, 0.0, covered=10**9,
                                last_checkpoint=time.monotonic() + 1e9)
    credits = Credits(None, None)  # type: ignore[arg-type]
    pump = Pump(run, _Upstream(), new_decoder(protocol), new_encoder(output, run), output == protocol,  # type: ignore[arg-type]
                Chain.of_hooks([credits.on_event], [credits.quiet]))
    sink = ClientSink(_Transport(), True, SimpleNamespace(writing_paused=False, joins_eof=True, eof_sent=False))
    pump.sink, pump.resp, pump.write = sink, object(), sink.out.append  # type: ignore[assignment]
    pump.done = asyncio.get_running_loop().create_future()
    if compiled:
        fast = pump.fast_path()
        assert fast is not None
        fast.body(line)  # the first chunk is the pump's
        framed, receive = b"%x\r\n%b\r\n" % (len(line), line), ChunkedBody(_Conn(), fast, []).data_received
        started = time.perf_counter()
        for _ in range(n):
            receive(framed)
        return (time.perf_counter() - started) / n * 1e6
    body, flush = pump.body, pump.flush
    started = time.perf_counter()
    for _ in range(n):
        body(line)
        flush()
    return (time.perf_counter() - started) / n * 1e6


async def main() -> None:
    for protocol, output, label in (("text", "text", "passed through (workflow)"),
                                    ("text", "json-array", "transcoded (profitbase)"),
                                    ("text", "ui", "transcoded (workflow ?protocol=ui)"),
                                    ("langflow", "text", "Langflow event to text (workflow)"),
                                    ("sse", "text", "SSE chat chunk to text (workflow)"),
                                    ("ai-sdk", "json-array", "AI SDK data part, an Item (profitbase)"),
                                    ("ndjson", "json-array", "NDJSON line, an Item (profitbase)")):
        print(f"{label}, Python pump: {await per_chunk_us(output, protocol=protocol):.2f} µs per chunk")
        if TextPath is not None and protocol != "ndjson":
            us = await per_chunk_us(output, compiled=True, protocol=protocol)
            print(f"{label}, compiled path: {us:.2f} µs per chunk")


if __name__ == "__main__":
    no_options(__doc__)
    asyncio.run(main())
