"""The hot path: upstream bytes -> decoder (side view) -> meter/policies -> encoder -> client.

Per chunk the pump does one read (``iter_any``: whatever the socket has, no line buffering), one
decode, the ``on_event`` hooks, and one write. When the output format equals the backend protocol
the chunk is written as it came; the decoder still reads it for metering. Nothing here buffers a
whole response, logs, or touches the store except through an ``on_event`` hook that asks to.

How a run ends (see :meth:`Pump.finish`):

- completed: the encoder's closing bytes (e.g. ``]``), then a clean chunked end;
- deadline / backend error / credits cut: the format's error event and a clean end where the
  format has one (Langflow events), else the body is aborted so the client sees an incomplete
  response, never a clean end.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from . import metrics as m
from .headers import JOB_ID_HEADER, STREAM_HEADERS
from .policies import StopRun
from .protocols import Decoder, Encoder, End, Error, Event, Item, Token, Usage, item_text
from .run import BACKEND_ERROR, COMPLETED, Meter, Run

Hook = Callable[[Run, Event], "Awaitable[None] | None"]


def observe(meter: Meter, ev: Event) -> None:
    """Metering: count generated characters and keep the backend's reported usage."""
    t = type(ev)
    if t is Token:
        meter.chars += len(ev.text)  # type: ignore[union-attr]
    elif t is Usage:
        if ev.output is not None:  # type: ignore[union-attr]
            meter.reported_output = max(meter.reported_output or 0, ev.output)  # type: ignore[union-attr]
        if ev.input is not None:  # type: ignore[union-attr]
            meter.reported_input = max(meter.reported_input or 0, ev.input)  # type: ignore[union-attr]
    elif t is Item:
        text = item_text(ev.obj)  # type: ignore[union-attr]
        if text:
            meter.chars += len(text)


class Pump:
    """Moves one run's body from the backend response to a sink (the client, or a buffer)."""

    __slots__ = ("run", "upstream", "decoder", "encoder", "passthrough", "hooks", "resp", "write",
                 "error_in_stream", "message", "result", "texts", "collect")

    def __init__(
        self,
        run: Run,
        upstream: aiohttp.ClientResponse,
        decoder: Decoder,
        encoder: Encoder,
        passthrough: bool,
        hooks: list[Hook],
        *,
        collect: bool = False,
    ) -> None:
        self.run = run
        self.upstream = upstream
        self.decoder = decoder
        self.encoder = encoder
        self.passthrough = passthrough
        self.hooks = hooks
        self.resp: web.StreamResponse | None = None
        self.write: Callable[[bytes], Awaitable[None]] | None = None
        self.error_in_stream = False  # the backend's own error event was passed through already
        self.message = ""
        self.result: object = None
        self.collect = collect
        self.texts: list[str] = []  # generated text, kept only for non-streaming runs

    async def start(self, resp: web.StreamResponse) -> None:
        """Prepare the client response (all headers are final here) and write the prologue."""
        await resp.prepare(self.run.request)
        self.resp, self.write = resp, resp.write
        opening = self.encoder.open()
        if opening and not self.passthrough:
            await self.write(opening)

    def response(self, extra_headers: dict[str, str]) -> web.StreamResponse:
        upstream_id = self.upstream.headers.get(JOB_ID_HEADER)
        if upstream_id and len(upstream_id) <= 128 and upstream_id.isprintable():
            self.run.job_id = upstream_id
        headers = {"Content-Type": self.encoder.content_type, JOB_ID_HEADER: self.run.job_id, **STREAM_HEADERS}
        headers.update(extra_headers)
        return web.StreamResponse(status=200, headers=headers)

    async def pump(self) -> str:
        """Run to the end of the upstream body; returns the outcome (deadline and disconnects arrive
        as exceptions: TimeoutError from the caller's deadline, ConnectionResetError / CancelledError)."""
        run, write, passthrough = self.run, self.write, self.passthrough
        assert write is not None
        feed, hooks, meter = self.decoder.feed, self.hooks, run.meter
        flow = run.flow_id or m.UNKNOWN_FLOW
        gap = m.child(m.CHUNK_GAP, flow)
        monotonic = time.monotonic
        last = 0.0
        try:
            async for chunk in self.upstream.content.iter_any():
                now = monotonic()
                if last:
                    gap.observe(now - last)
                else:
                    m.child(m.BACKEND_TTFB, flow).observe(now - run.forwarded_mono)
                    if self.resp is not None:
                        m.child(m.CLIENT_TTFB, run.dialect, flow).observe(now - run.started_mono)
                last = now
                run.bytes_in += len(chunk)
                events = feed(chunk)
                if passthrough:
                    outcome = await self._events(events, hooks, meter, None)
                    await write(chunk)
                    run.bytes_out += len(chunk)
                    if outcome is not None:
                        # an Error decoded from this chunk is already in the bytes just written
                        self.error_in_stream = outcome == BACKEND_ERROR
                        return outcome
                else:
                    parts: list[bytes] = []
                    outcome = await self._events(events, hooks, meter, parts) if events else None
                    if parts:
                        out = b"".join(parts) if len(parts) > 1 else parts[0]
                        if out:
                            await write(out)
                            run.bytes_out += len(out)
                    if outcome is not None:
                        return outcome
                # drop this chunk's objects before waiting for the next (an idle stream would keep
                # them, and orjson's output buffers alone are 4 kB each)
                chunk = events = parts = out = None  # type: ignore[assignment]
        except aiohttp.ClientPayloadError:
            self.message = "the backend stream broke off"
            return BACKEND_ERROR
        outcome = await self._events(self.decoder.close(), hooks, meter, None)
        return outcome or COMPLETED

    async def _events(self, events: list[Event], hooks: list[Hook], meter: Meter, parts: list[bytes] | None):
        for ev in events:
            t = type(ev)
            if t is Error:
                self.message = ev.message  # type: ignore[union-attr]
                return BACKEND_ERROR
            observe(meter, ev)
            if self.collect:
                if t is Token:
                    self.texts.append(ev.text)  # type: ignore[union-attr]
                elif t is Item:
                    text = item_text(ev.obj)  # type: ignore[union-attr]
                    if text:
                        self.texts.append(text)
                elif t is End:
                    self.result = ev.result  # type: ignore[union-attr]
            for hook in hooks:
                try:
                    pending = hook(self.run, ev)
                    if pending is not None:
                        await pending
                except StopRun as stop:
                    self.message = stop.message
                    return stop.outcome
            if parts is not None:
                parts.append(self.encoder.encode(ev))
        return None

    async def finish(self, outcome: str) -> None:
        """End the client's stream as ``outcome`` requires (see the module docstring)."""
        if self.write is None:
            return
        if outcome == COMPLETED:
            if not self.passthrough:
                closing = self.encoder.close()
                if closing:
                    await self.write(closing)
            await self._resp_eof()
            return
        if self.error_in_stream:  # the backend's error event already reached the client
            await self._resp_eof()
            return
        event = None if (self.passthrough and self.decoder.pending) else self.encoder.error(
            self.message or "the run was cut")
        if event is None:
            self.abort()
            return
        await self.write(event)
        await self._resp_eof()

    async def _resp_eof(self) -> None:
        if self.resp is not None:
            await self.resp.write_eof()

    def abort(self) -> None:
        """Close the client connection without the chunked terminator: a visibly incomplete body."""
        transport = self.run.request.transport
        if transport is not None:
            transport.close()
