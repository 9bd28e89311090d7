"""The hot path: upstream bytes -> decoder (side view) -> meter/policies -> encoder -> client.

The pump is *pushed*: the upstream connection (:mod:`proxy.upstream`) calls :meth:`Pump.body` from
its socket's ``data_received`` with whatever bytes arrived, and the pump decodes them, runs the
``on_event`` hooks and writes the result to the client's transport, all synchronously: per chunk
one read, one decode, the hooks, one write, and no task wake-up. When the output format equals the
backend protocol the chunk is written as it came; the decoder still reads it for metering. Nothing
here buffers a whole response, logs, or touches the store except through a hook that asks to.

Two things suspend the flow, each by pausing the upstream socket until it is over:

- a hook that returns an awaitable (a credit hold that must grow in the store): the chunk's
  remaining events wait for it, later chunks are held in arrival order;
- a client that reads slower than the backend writes (the client transport is above its high
  water mark): reading resumes once it has drained.

How the client's stream ends is :mod:`proxy.stream.ending`'s.

A streamed ``text`` body (and a transcoded Langflow, AI SDK or SSE one) has a compiled front
(:mod:`proxy.stream.textpath`, chosen in :meth:`Pump.fast_path`): it takes the common chunk itself
and calls into this class for the rest (the first chunk, a policy's limit crossed, a hold,
back-pressure, the end); its module docstring says what it keeps between those calls. Whatever you
change here about what a chunk does, the parity tests in ``tests/stream/test_textpath*.py`` hold
both to it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .. import metrics as m
from ..http1.headers import JOB_ID_HEADER, STREAM_HEADERS
from ..policies.base import StopRun
from ..protocols import Decoder, Encoder, Error, Event, Token
from ..run import BACKEND_ERROR, CLIENT_DISCONNECTED, COMPLETED, Run
from ..upstream import Connection
from .sinks import BufferSink, ClientSink, open_client

if TYPE_CHECKING:
    from ..policies import Chain

try:
    from .textpath import TextPath
except ImportError:  # not built (no C compiler at install): every chunk takes the Python path
    TextPath = None

monotonic = time.monotonic



class Pump:
    """Moves one run's body from the backend connection to a sink (the client, or a buffer).

    ``await pump.pump()`` attaches to the upstream and gives the outcome once the body ended; the
    caller's deadline and client disconnects arrive as cancellation of that await, after which the
    caller calls :meth:`detach` and closes the upstream."""

    __slots__ = ("run", "upstream", "decoder", "encoder", "passthrough", "chain", "resp", "sink", "feed",
                 "error_in_stream", "message", "collector", "done", "ended", "held",
                 "draining", "tasks", "ctx", "last", "gap", "write", "fast")

    def __init__(
        self,
        run: Run,
        upstream: Connection,
        decoder: Decoder,
        encoder: Encoder,
        passthrough: bool,
        chain: Chain,
    ) -> None:
        self.run = run
        self.upstream = upstream
        self.decoder = decoder
        self.feed = decoder.feed
        self.encoder = encoder
        self.passthrough = passthrough
        self.chain = chain  # the run's policies: their hooks, and the quiet limits of the compiled path
        self.resp: web.StreamResponse | None = None
        self.sink: ClientSink | BufferSink | None = None
        self.error_in_stream = False  # the backend's own error event was passed through already
        self.message = ""
        self.collector: BufferSink | None = None  # a non-streaming run's body, text and result
        self.done: asyncio.Future[str] | None = None
        self.ended = False
        self.held: list[bytes | str | None] | None = None  # pieces waiting behind a hook (None: the end)
        self.draining = False
        self.tasks: set[asyncio.Task] | None = None  # made when first needed: most runs never need one
        self.ctx: contextvars.Context | None = None
        self.last = 0.0  # when the previous chunk arrived
        self.gap = m.child(m.CHUNK_GAP, run.flow_id or m.UNKNOWN_FLOW)
        self.write: Callable[[bytes], None] = self._no_sink  # the sink's list append, once there is one
        self.fast = None  # the compiled text path, when it takes this run's chunks

    def response_headers(self, extra_headers: dict[str, str]) -> dict[str, str]:
        """The client response's headers: ``flow-job-id`` is always the gateway's own job id (a
        backend's own id never renames the run: see ``Run.backend_job_id``)."""
        headers = {"Content-Type": self.encoder.content_type, JOB_ID_HEADER: self.run.job_id, **STREAM_HEADERS}
        headers.update(getattr(self.encoder, "headers", None) or {})  # a format's own (UI stream: its version)
        headers.update(extra_headers)
        return headers

    async def start(self, headers: dict[str, str]) -> None:
        """Send the client response's status and headers (final here), then the prologue."""
        self.sink, self.resp = await open_client(self.run.request, 200, headers)
        self.write = self.sink.out.append
        self.fast = self.fast_path()
        opening = self.encoder.open()
        if opening and not self.passthrough:
            self.sink.write(opening)
            if self.sink.head is None:  # (else it leaves with the head, at the first flush: see pump())
                self.sink.flush()

    def fast_path(self):
        """The compiled per-chunk path (:mod:`proxy.stream.textpath`) for a streamed body it reads
        (text; Langflow events, AI SDK data streams and SSE, transcoded), when it was built, the
        chain's hooks all say when they are quiet, and the output format can encode a piece of
        text directly; else None (this pump's own path)."""
        if TextPath is None or self.chain.quiet is None or not TextPath.takes(self.decoder, self.passthrough) \
                or type(self.sink) is not ClientSink:
            return None
        encode_text = None if self.passthrough else getattr(self.encoder, "encode_text", None)
        if encode_text is None and not self.passthrough:
            return None
        return TextPath(self, self.sink, self.chain.quiet, encode_text)

    def collect_into(self, parts: list[bytes]) -> BufferSink:
        """Non-streaming: the body goes to ``parts`` (the encoder's prologue first); the returned
        sink also keeps the generated text and the backend's end result."""
        self.sink = self.collector = BufferSink(parts)
        self.write = parts.append
        parts.append(self.encoder.open())
        return self.collector

    @staticmethod
    def _no_sink(data: bytes) -> None:
        raise RuntimeError("the pump has no sink yet")

    def pump(self) -> asyncio.Future[str]:
        """Attach to the upstream body; the future holds the outcome once it has ended. (A future,
        not a coroutine: an open stream keeps no frame of the pump's.)"""
        self.done = asyncio.get_running_loop().create_future()
        self.ctx = contextvars.copy_context()  # background work runs with this run's log context
        self.upstream.attach(self if self.fast is None else self.fast)
        sink = self.sink
        if type(sink) is ClientSink and sink.head is not None:  # no body came with the backend's head
            sink.flush()
        return self.done

    def detach(self) -> None:
        """Stop: no more writes from this pump (the caller is ending the stream itself)."""
        self.ended = True
        if self.fast is not None:  # its counts reach the run now
            self.fast.hand_over()
            self.fast = None  # (it points back at the pump: no cycle for the GC)
        for task in self.tasks or ():
            task.cancel()

    # --- pushed by the upstream connection ---
    def body(self, data: bytes) -> None:
        if self.ended:
            return
        self.count(len(data))
        self.take(data)

    def count(self, size: int) -> None:
        """A piece of ``size`` bytes arrived: its gap since the previous one (the first: the time
        to first byte) and its bytes."""
        now, run = monotonic(), self.run
        if self.last:
            self.gap.observe(now - self.last)
        else:
            flow = run.flow_id or m.UNKNOWN_FLOW
            m.child(m.BACKEND_TTFB, flow).observe(now - run.forwarded_mono)
            if self.resp is not None:
                m.child(m.CLIENT_TTFB, run.dialect, flow).observe(now - run.started_mono)
        self.last = now
        run.bytes_in += size

    def take(self, data: bytes) -> None:
        """A counted piece, from the decoder on (held in arrival order while a hook awaits)."""
        if self.ended:
            return
        if self.held is not None:
            self.held.append(data)
            return
        try:  # _guard, inlined: this is the per-chunk path
            self._chunk(data, self.feed(data))
        except ConnectionResetError:
            self._end(CLIENT_DISCONNECTED)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting handler, which logs it
            self._fail(exc)

    def end(self) -> None:
        if self.ended:
            return
        if self.held is not None:
            self.held.append(None)
            return
        self._guard(self._chunk, None, self.decoder.close())

    def decoded(self, data: bytes, text: str) -> None:
        """A piece the compiled text path counted and decoded already (``text``; nothing metered
        yet): from the hooks on, as :meth:`take` goes on."""
        self._guard(self._chunk, data, [Token(text)])

    def decoded_events(self, events: list[Event]) -> None:
        """Events the compiled path decoded from a counted piece (transcoded: its bytes are not
        written as they came): from metering on, as :meth:`take` goes on."""
        self._guard(self._chunk, b"", events)

    def broken(self, message: str) -> None:
        if self.ended:
            return
        if self.held is not None:
            self.held.append(message)
            return
        self.message = message
        self._end(BACKEND_ERROR)

    # --- inside ---
    def _guard(self, step, *args) -> None:
        """Run one step; a client gone away or a bug ends the run instead of escaping into the loop."""
        try:
            step(*args)
        except ConnectionResetError:
            self._end(CLIENT_DISCONNECTED)
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting handler, which logs it
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        self.ended = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def _chunk(self, data: bytes | None, events: list[Event]) -> None:
        """One chunk and its decoded events (``data`` None: the end of the body)."""
        parts: list[bytes] | None = None if self.passthrough else []
        outcome, blocked = self._events(events, parts) if events else (None, None)
        if blocked is not None:
            self.held = []
            self.upstream.pause()
            self._spawn(self._resume(blocked, events, parts, data))
        elif parts is None and outcome is None and data:  # passed through, the run goes on: _emit's common case
            self.write(data)
            self.run.bytes_out += len(data)
        else:
            self._emit(data, parts, outcome)

    def _events(self, events: list[Event], parts: list[bytes] | None, i: int = 0, k: int = 0):
        """``events[i:]`` through metering, collection and the hooks (event ``i`` from hook ``k``).
        Returns ``(outcome, None)``, or ``(None, (awaitable, i, k))`` when a hook's awaitable must
        complete before hook ``k`` of event ``i`` runs."""
        run, n = self.run, len(events)
        hooks_of = self.chain.hooks_of if self.chain.hooks else None
        while i < n:
            ev = events[i]
            if k == 0:
                t = type(ev)
                if t is Token:  # Meter.observe(), inlined for the common case
                    run.meter.chars += len(ev.text)  # type: ignore[union-attr]
                elif t is Error:
                    self.message = ev.message  # type: ignore[union-attr]
                    return BACKEND_ERROR, None
                else:
                    run.meter.observe(ev)
                if self.collector is not None:
                    self.collector.take(ev)
            if hooks_of is not None:
                try:
                    blocked = hooks_of(run, ev, k)
                except StopRun as stop:
                    self.message = stop.message
                    return stop.outcome, None
                if blocked is not None:
                    return None, (blocked[0], i, blocked[1])
            if parts is not None:
                parts.append(self.encoder.encode(ev))
            i, k = i + 1, 0
        return None, None

    def _emit(self, data: bytes | None, parts: list[bytes] | None, outcome: str | None) -> None:
        sink, run = self.sink, self.run
        assert sink is not None
        if parts is None:  # passthrough: the chunk as it came
            if data:
                sink.write(data)
                run.bytes_out += len(data)
                if outcome is not None:
                    # an Error decoded from this chunk is already in the bytes just written
                    self.error_in_stream = outcome == BACKEND_ERROR
        elif parts:
            out = b"".join(parts) if len(parts) > 1 else parts[0]
            if out:
                sink.write(out)
                run.bytes_out += len(out)
        if outcome is None and data is None:
            outcome = COMPLETED
        if outcome is not None:
            self._end(outcome)

    def flush(self) -> None:
        """Send what was written since the last flush; a client that cannot keep up pauses the
        upstream until it has drained."""
        try:
            paused = self.sink.flush()  # type: ignore[union-attr]
        except ConnectionResetError:
            self._end(CLIENT_DISCONNECTED)
            return
        if paused and not self.draining and not self.ended:
            self.draining = True
            self.upstream.pause()
            self._spawn(self._drain())

    async def _resume(self, blocked, events: list[Event], parts: list[bytes] | None, data: bytes | None) -> None:
        try:
            outcome = None
            while blocked is not None:
                pending, i, k = blocked
                try:
                    await pending
                except StopRun as stop:
                    self.message, outcome = stop.message, stop.outcome
                    break
                outcome, blocked = self._events(events, parts, i, k)
            if self.ended:
                return
            self._emit(data, parts, outcome)
            held, self.held = self.held or [], None
            while held and self.held is None and not self.ended:
                item = held.pop(0)
                if item is None:
                    self.end()
                elif isinstance(item, str):
                    self.broken(item)
                else:
                    self.take(item)
            self.flush()
            if self.fast is not None:  # the hooks ran here: their quiet limits moved
                self.fast.limits()
            if self.held is not None:  # blocked again: keep the arrival order
                self.held.extend(held)
            elif not self.ended and not self.draining:
                self.upstream.resume()
        except ConnectionResetError:
            self._end(CLIENT_DISCONNECTED)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    async def _drain(self) -> None:
        try:
            await self.sink.drain()  # type: ignore[union-attr]
        except (ConnectionResetError, ConnectionError):
            self._end(CLIENT_DISCONNECTED)
            return
        self.draining = False
        if not self.ended and self.held is None:
            self.upstream.resume()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro, context=self.ctx)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _end(self, outcome: str) -> None:
        if self.ended:
            return
        self.ended = True
        if outcome == COMPLETED and self.resp is not None and type(self.sink) is ClientSink:
            try:
                self._close_now()
            except ConnectionResetError:
                outcome = CLIENT_DISCONNECTED
        if self.done is not None and not self.done.done():
            self.done.set_result(outcome)

    def _close_now(self) -> None:
        """A completed stream on flowgate's front ends here, as the backend's body ends: the
        encoder's closing bytes and the chunked terminator leave with what this read left pending,
        in one write, rather than one more write once the handler runs again
        (:func:`proxy.stream.ending.finish` then finds the stream ended)."""
        sink = self.sink
        assert sink is not None
        if not sink.joins_eof:  # (aiohttp's front: finish() writes the closing bytes, then aiohttp the end)
            return
        if not self.passthrough:
            closing = self.encoder.close()
            if closing:
                sink.write(closing)
        sink.end_now()
