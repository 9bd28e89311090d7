"""The Vercel AI SDK data stream protocol (v4): one ``TYPE:JSON`` part per line.

Backends built on the AI SDK's ``toDataStreamResponse()`` (or Python ports of it) speak this. The
parts that matter here: ``0:"text"`` is a :class:`Token`; ``e:`` (finish step) and ``d:`` (finish
message) carry ``usage`` as ``{"promptTokens", "completionTokens"}``, a :class:`Usage` (``d`` holds
the message's total, so the larger count wins); ``3:"message"`` is an :class:`Error`; ``d:`` also
ends the run (:class:`End`). Data (``2:``), annotations (``8:``), tool calls (``9:``) and tool
results (``a:``) are passed on as an :class:`Item` of ``{"type": TYPE, "value": ...}``; the
framing and delta parts (step start, tool-call deltas, reasoning, sources, files) are dropped.
Items generate no text of their own for metering. A stream that stops before its ``d:`` part
ends broken.

There is no encoder: no public dialect answers in this format, so these backends are always
transcoded (to plain text for the workflow route, a JSON array for profitbase, Langflow events).
"""

from __future__ import annotations

import orjson

from ._lines import LineDecoder
from .events import End, Error, Event, Item, Token, usage_from

ITEM_PARTS = frozenset((b"2", b"8", b"9", b"a"))


class AiSdkDecoder(LineDecoder):
    __slots__ = ("_finished",)

    def __init__(self) -> None:
        super().__init__()
        self._finished = False

    def line(self, line: bytes, out: list[Event]) -> None:
        kind, sep, raw = line.partition(b":")
        if not sep or not kind:
            return  # blank or not a part: nothing to meter
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if kind == b"0":
            if isinstance(value, str) and value:
                out.append(Token(value))
        elif kind in (b"d", b"e"):
            usage = usage_from(value.get("usage")) if isinstance(value, dict) else None
            if usage is not None:
                out.append(usage)
            if kind == b"d":
                self._finished = True
                out.append(End(value))
        elif kind == b"3":
            out.append(Error(value if isinstance(value, str) else "the backend reported an error"))
        elif kind in ITEM_PARTS:
            out.append(Item({"type": kind.decode("ascii"), "value": value}))

    def close(self) -> list[Event]:
        out = super().close()
        if not self._finished and not any(type(ev) is Error for ev in out):
            out.append(Error("the backend stream ended before its finish part"))
        return out
