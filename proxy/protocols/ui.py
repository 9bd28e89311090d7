"""The Vercel AI SDK UI message stream (AI SDK 5 and later; what ``useChat``'s default
``DefaultChatTransport`` reads): Server-Sent Events whose ``data:`` lines are JSON "chunks".

The part shapes follow the SDK's own schema (``packages/ai/src/ui-message-stream/ui-message-chunks.ts``;
its 5.0 releases validate every chunk with *strict* objects, so a field the schema does not name
makes the client throw). A run is written as::

    data: {"type":"start","messageId":JOB_ID}
    data: {"type":"text-start","id":"text-0"}                      (before the first text)
    data: {"type":"text-delta","id":"text-0","delta":"..."}        (one per piece of text)
    data: {"type":"text-end","id":"text-0"}
    data: {"type":"finish","finishReason":"stop","messageMetadata":{"usage":{...},"jobId":JOB_ID}}
    data: [DONE]

(each line followed by a blank line). A run cut by its cap, by credits or by a backend failure ends
with ``{"type":"error","errorText":...}`` and ``data: [DONE]`` instead of ``finish``: the SDK then
reports an error (``useChat``'s ``status`` becomes ``"error"``) instead of a complete answer.
``finishReason`` is in the SDK's schema since ai 5.0.92; older 5.0 clients reject it.

A structured element without text (from an ndjson/SSE/JSON-array backend) becomes a data part,
``{"type":"data-item","data":...}``; usage and the backend's end payload are not parts of their own
(the usage is the run's metered total, given once in ``finish``).
"""

from __future__ import annotations

from typing import Protocol

import orjson

from .events import Event, Item, Token, item_text

TEXT_ID = "text-0"  # the one text part of the answer (ids need only be unique within a message)
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}  # with STREAM_HEADERS: no-cache, X-Accel-Buffering: no

_DELTA = b'data: {"type":"text-delta","id":"' + TEXT_ID.encode() + b'","delta":'
_TEXT_START = b'data: {"type":"text-start","id":"' + TEXT_ID.encode() + b'"}\n\n'
_TEXT_END = b'data: {"type":"text-end","id":"' + TEXT_ID.encode() + b'"}\n\n'
_DONE = b"data: [DONE]\n\n"


class Counts(Protocol):
    """What the finish part reports as usage (a run's :class:`proxy.run.Meter`)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


class RunView(Protocol):
    """What the encoder reads of its run: the message id and the metered usage."""

    @property
    def job_id(self) -> str: ...

    @property
    def meter(self) -> Counts: ...


def part(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class UiEncoder:
    content_type = "text/event-stream"
    headers = HEADERS
    takes_run = True  # proxy.protocols.new_encoder hands it the run

    __slots__ = ("_run", "_open")

    def __init__(self, run: RunView | None = None) -> None:
        self._run = run
        self._open = False  # the text part has started and not ended

    def _job_id(self) -> str | None:
        return self._run.job_id if self._run is not None else None

    def open(self) -> bytes:
        job_id = self._job_id()
        return part({"type": "start", "messageId": job_id} if job_id else {"type": "start"})

    def encode_text(self, text: str) -> bytes:
        # one delta per piece: the compiled text path calls this per chunk, so it stays a concatenation
        if self._open:
            return _DELTA + orjson.dumps(text) + b"}\n\n"
        self._open = True
        return _TEXT_START + _DELTA + orjson.dumps(text) + b"}\n\n"

    def encode(self, event: Event) -> bytes:
        t = type(event)
        if t is Token:
            text = event.text  # type: ignore[union-attr]
            return self.encode_text(text) if text else b""
        if t is Item:
            text = item_text(event.obj)  # type: ignore[union-attr]
            if text is not None:
                return self.encode_text(text) if text else b""
            return part({"type": "data-item", "data": event.obj})  # type: ignore[union-attr]
        return b""

    def _end_text(self) -> bytes:
        if not self._open:
            return b""
        self._open = False
        return _TEXT_END

    def close(self) -> bytes:
        metadata: dict = {}
        if self._run is not None:
            meter = self._run.meter
            inp, out = meter.input_tokens, meter.output_tokens
            metadata = {"usage": {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out},
                        "jobId": self._run.job_id}
        finish = {"type": "finish", "finishReason": "stop", "messageMetadata": metadata}
        return self._end_text() + part(finish) + _DONE

    def error(self, message: str) -> bytes | None:
        return self._end_text() + part({"type": "error", "errorText": message}) + _DONE
