"""The end of a client's stream, once its pump stopped: how it ends depends on the outcome.

- completed: the encoder's closing bytes (e.g. ``]``), then a clean chunked end (on flowgate's
  front the pump writes these itself as the backend's body ends: ``Pump._close_now``);
- deadline / backend error / credits cut: the format's error event and a clean end where the
  format has one (Langflow events), else the body is aborted so the client sees an incomplete
  response, never a clean end.
"""

from __future__ import annotations

from ..run import COMPLETED
from .pump import Pump


async def finish(pump: Pump, outcome: str) -> None:
    """End the client's stream as ``outcome`` requires. The pump is stopped first: a run cut by
    its deadline still has a backend that sends, and what it sends while the end is written (the
    aiohttp front awaits a drain after the chunked terminator) must never follow that end on the
    client's connection."""
    pump.detach()
    sink = pump.sink
    if sink is None or pump.resp is None or sink.ended:  # (a completed stream the pump ended itself)
        return
    if outcome == COMPLETED:
        if not pump.passthrough:
            closing = pump.encoder.close()
            if closing:
                sink.write(closing)
        await sink.end()  # type: ignore[union-attr]
        return
    if pump.error_in_stream:  # the backend's error event already reached the client
        await sink.end()  # type: ignore[union-attr]
        return
    event = None if (pump.passthrough and pump.decoder.pending) else pump.encoder.error(
        pump.message or "the run was cut")
    if event is None:
        sink.flush()  # what was received goes out, then the body breaks off
        abort(pump)
        return
    sink.write(event)
    await sink.end()  # type: ignore[union-attr]


def abort(pump: Pump) -> None:
    """Close the client connection without the chunked terminator: a visibly incomplete body."""
    transport = pump.run.request.transport
    if transport is not None:
        transport.close()
