"""Langflow's streaming run API: one JSON object per event, ``{"event": name, "data": {...}}``,
each followed by a blank line (``json + "\\n\\n"``), as Langflow's EventManager writes them.

Decoder: ``token`` → Token(chunk); ``add_message`` from the flow (not the echoed user input) →
the part of its text not yet streamed as tokens, plus Usage from ``properties.usage``; ``end`` →
Usage found in the result, then End(result); ``error`` → Error. Other events (``vertices_sorted``,
``end_vertex``, ``build_start``...) carry no generated text and are skipped. A stream that ends
without ``end`` or ``error`` was cut short: :meth:`LangflowDecoder.close` reports an Error.

Encoder: the same frames, so Langflow clients read any backend through the langflow dialect.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ._lines import LineBuffer, LineTooLong
from .events import End, Error, Event, Item, Token, Usage, item_text, usage_from


def _find_usage(obj: Any, depth: int = 0) -> Usage | None:
    """Depth-first search of a run result for a usage dict (bounded depth)."""
    if depth > 8:
        return None
    if isinstance(obj, dict):
        usage = usage_from(obj.get("usage"))
        if usage is not None:
            return usage
        values = obj.values()
    elif isinstance(obj, list):
        values = obj
    else:
        return None
    for value in values:
        if isinstance(value, dict | list):
            found = _find_usage(value, depth + 1)
            if found is not None:
                return found
    return None


class LangflowDecoder:
    """``lines`` and ``emitted`` are shared with the compiled text path (:mod:`proxy.stream.textpath`),
    which reads ``token`` frames itself, exactly as :meth:`frame` does, and hands this decoder
    every other frame (:meth:`frame`)."""

    __slots__ = ("lines", "emitted", "_finished", "_usage")

    def __init__(self) -> None:
        self.lines = LineBuffer()
        self.emitted: dict[str, int] = {}  # message id -> characters already emitted
        self._finished = False
        self._usage: Usage | None = None

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        try:
            lines = self.lines.feed(data)
        except LineTooLong as exc:
            self.too_long(exc, out)
            return out
        for line in lines:
            if line:
                self._line(line, out)
        return out

    def too_long(self, exc: LineTooLong, out: list[Event]) -> None:
        """A line over the limit (nothing of it is kept): the stream is the backend's error."""
        self._finished = True
        out.append(Error(str(exc)))

    def close(self) -> list[Event]:
        out: list[Event] = []
        rest = self.lines.rest()
        if rest.strip():
            self._line(rest, out)
        if not self._finished:
            out.append(Error("backend stream ended before its end event"))
            self._finished = True
        return out

    @property
    def pending(self) -> bool:
        return self.lines.pending

    def _line(self, line: bytes, out: list[Event]) -> None:
        try:
            frame = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        if isinstance(frame, dict):
            self.frame(frame, out)

    def frame(self, frame: dict, out: list[Event]) -> None:
        """One decoded frame's events (appended to ``out``)."""
        event, data = frame.get("event"), frame.get("data")
        if event == "token":
            if isinstance(data, dict) and isinstance(data.get("chunk"), str) and data["chunk"]:
                chunk = data["chunk"]
                msg_id = str(data.get("id", ""))
                self.emitted[msg_id] = self.emitted.get(msg_id, 0) + len(chunk)
                out.append(Token(chunk))
        elif event == "add_message":
            if not isinstance(data, dict) or data.get("sender") == "User":
                return
            text = data.get("text")
            if isinstance(text, str):
                msg_id = str(data.get("id", ""))
                done = self.emitted.get(msg_id, 0)
                if len(text) > done:
                    out.append(Token(text[done:]))
                    self.emitted[msg_id] = len(text)
            props = data.get("properties")
            if isinstance(props, dict):
                self._report(usage_from(props.get("usage")), out)
        elif event == "end":
            result = data.get("result") if isinstance(data, dict) else data
            self._report(_find_usage(result), out)
            self._finished = True
            out.append(End(result))
        elif event == "error":
            self._finished = True
            if isinstance(data, dict):
                message = data.get("error") or data.get("text") or data.get("message") or "backend error"
            else:
                message = data if isinstance(data, str) and data else "backend error"
            out.append(Error(str(message)))

    def _report(self, usage: Usage | None, out: list[Event]) -> None:
        if usage is not None and usage != self._usage:
            self._usage = usage
            out.append(usage)


def _frame(event: str, data: Any) -> bytes:
    return orjson.dumps({"event": event, "data": data}) + b"\n\n"


def run_response(text: str, session_id: str) -> dict:
    """A minimal Langflow RunResponse carrying ``text`` as the Chat Output message."""
    message = {"text": text, "sender": "Machine", "sender_name": "AI", "session_id": session_id}
    return {
        "session_id": session_id,
        "outputs": [{
            "inputs": {},
            "outputs": [{
                "results": {"message": message},
                "artifacts": {},
                "outputs": {"message": {"message": text, "type": "text"}},
                "logs": {},
                "messages": [],
                "timedelta": None,
                "duration": None,
                "component_display_name": "Chat Output",
                "component_id": "ChatOutput",
                "used_frozen_result": False,
            }],
        }],
    }


class LangflowEncoder:
    content_type = "text/event-stream"

    __slots__ = ("_id", "_texts", "_ended")

    def __init__(self) -> None:
        self._id = str(uuid.uuid4())
        self._texts: list[str] = []
        self._ended = False

    def open(self) -> bytes:
        return b""

    def encode_text(self, text: str) -> bytes:
        self._texts.append(text)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        return _frame("token", {"chunk": text, "id": self._id, "timestamp": stamp})

    def encode(self, event: Event) -> bytes:
        t = type(event)
        if t is Token:
            return self.encode_text(event.text)  # type: ignore[union-attr]
        if t is Item:
            text = item_text(event.obj)  # type: ignore[union-attr]
            if text is not None:
                return self.encode_text(text)
            return _frame("add_message", {"text": "", "sender": "Machine", "sender_name": "AI", "id": self._id,
                                          "data": event.obj})  # type: ignore[union-attr]
        if t is End:
            return self._end(event.result)  # type: ignore[union-attr]
        return b""

    def _end(self, result: Any) -> bytes:
        if self._ended:
            return b""
        self._ended = True
        if result is None:
            result = run_response("".join(self._texts), self._id)
        return _frame("end", {"result": result})

    def close(self) -> bytes:
        return self._end(None)

    def error(self, message: str) -> bytes | None:
        return _frame("error", {"error": message})
