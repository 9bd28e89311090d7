"""The events a backend protocol's decoder makes and an output format's encoder takes, and the
interfaces of both (:mod:`proxy.protocols` holds the registry of implementations).

Events are deliberately tiny, slotted dataclasses: one is made per decoded token on the hot path.
They are not frozen (a frozen dataclass's constructor costs twice as much); treat them as values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True)
class Token:
    """A piece of generated text."""

    text: str


@dataclass(slots=True)
class Usage:
    """Token usage reported by the backend (cumulative for the run, as backends report it)."""

    input: int | None = None
    output: int | None = None
    total: int | None = None


@dataclass(slots=True)
class Item:
    """A structured element (an ndjson line, a JSON-array element, an SSE JSON payload)."""

    obj: Any


@dataclass(slots=True)
class End:
    """The backend said the run is complete; ``result`` is its final payload when it has one."""

    result: Any = None


@dataclass(slots=True)
class Error:
    """The backend reported a failure (or its stream was cut short in a way the protocol can tell)."""

    message: str


Event = Token | Usage | Item | End | Error


class Decoder(Protocol):
    """Incremental decoder from one backend response body to events.

    ``feed`` is called once per received chunk with whatever bytes arrived (frames may be split
    anywhere, even inside a UTF-8 sequence); it returns the events completed by that chunk, in order.
    ``close`` is called once at EOF and returns events for any trailing complete frame; a protocol
    that can tell a truncated stream (e.g. Langflow without an ``end`` event) returns an
    :class:`Error` there. ``pending`` is true while a partial frame is buffered.
    """

    def feed(self, data: bytes) -> list[Event]: ...

    def close(self) -> list[Event]: ...

    @property
    def pending(self) -> bool: ...


class Encoder(Protocol):
    """Encoder from events to one output format.

    ``open()`` is written right after the response headers (e.g. ``[`` for a JSON array),
    ``encode(event)`` per event (``b""`` for events the format does not show), ``close()`` on a
    clean end. ``error(message)`` returns the format's error event, or ``None`` when the format has
    none: the pump then aborts the chunked body so the client sees an incomplete response.
    ``encode_text(text)`` is ``encode(Token(text))`` without the event: the compiled text path
    (:mod:`proxy.stream.textpath`) calls it per chunk.
    """

    content_type: str

    def open(self) -> bytes: ...

    def encode(self, event: Event) -> bytes: ...

    def encode_text(self, text: str) -> bytes: ...

    def close(self) -> bytes: ...

    def error(self, message: str) -> bytes | None: ...


def item_text(obj: Any) -> str | None:
    """The generated text carried by a structured element, if any.

    Strings are text; dicts carry it under one of the common keys. Used by text-like encoders and
    by metering so that ndjson/JSON-array/SSE backends are charged for what they generate.
    """
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict):
        for key in ("text", "chunk", "content", "token", "delta", "message"):
            value = obj.get(key)
            if isinstance(value, str):
                return value
    return None


def usage_from(obj: Any) -> Usage | None:
    """A :class:`Usage` from a usage dict in Langflow (``input_tokens``/``output_tokens``) or
    OpenAI (``prompt_tokens``/``completion_tokens``) or AI SDK (``promptTokens``/``completionTokens``)
    shape; None when it carries no counts."""
    if not isinstance(obj, dict):
        return None
    inp = obj.get("input_tokens", obj.get("prompt_tokens", obj.get("promptTokens")))
    out = obj.get("output_tokens", obj.get("completion_tokens", obj.get("completionTokens")))
    total = obj.get("total_tokens", obj.get("totalTokens"))
    inp = inp if isinstance(inp, int) else None
    out = out if isinstance(out, int) else None
    total = total if isinstance(total, int) else None
    if inp is None and out is None and total is None:
        return None
    return Usage(inp, out, total)
