"""Backend protocols (bytes -> events) and output formats (events -> bytes).

The pump reads upstream bytes, hands each chunk to the backend protocol's *decoder* and, unless
the bytes pass through untouched, hands the resulting events to the dialect's *encoder*.

To add a backend protocol: write a module with a class implementing :class:`Decoder`, and add it to
``DECODERS`` below. To add an output format: implement :class:`Encoder` and add it to ``ENCODERS`` (a class with
``takes_run = True`` is built with the run, see :func:`new_encoder`).
A name present in both tables means "same format in and out": the pump then writes the upstream
bytes as they came and only uses the decoder as a side view for metering.

The events and the two interfaces are in :mod:`proxy.protocols.events` (re-exported here). The
request side of a backend protocol, where it has one, is :mod:`proxy.protocols.chat` (AI SDK chat
requests mapped onto the backend's own body).
"""

from __future__ import annotations

from . import ai_sdk, json_array, langflow, ndjson, sse, text, ui
from .events import Decoder, Encoder, End, Error, Event, Item, Token, Usage, item_text, usage_from

__all__ = [
    "Decoder", "Encoder", "End", "Error", "Event", "Item", "Token", "Usage", "item_text", "usage_from",
    "BACKEND_PROTOCOLS", "OUTPUT_FORMATS", "new_decoder", "new_encoder",
]


def _registry() -> tuple[dict[str, type], dict[str, type]]:
    decoders = {
        "text": text.TextDecoder,
        "langflow": langflow.LangflowDecoder,
        "ndjson": ndjson.NdjsonDecoder,
        "json-array": json_array.JsonArrayDecoder,
        "sse": sse.SseDecoder,
        "ai-sdk": ai_sdk.AiSdkDecoder,
    }
    encoders = {
        "text": text.TextEncoder,
        "langflow": langflow.LangflowEncoder,
        "json-array": json_array.JsonArrayEncoder,
        "ui": ui.UiEncoder,
    }
    return decoders, encoders


DECODERS, ENCODERS = _registry()

BACKEND_PROTOCOLS = tuple(DECODERS)
OUTPUT_FORMATS = tuple(ENCODERS)


def new_decoder(protocol: str) -> Decoder:
    return DECODERS[protocol]()


def new_encoder(fmt: str, run: ui.RunView | None = None) -> Encoder:
    """An encoder for one response. ``run`` (the job id, the metered usage) goes to the formats
    that show it (``takes_run``: the UI message stream's message id and finish usage)."""
    cls = ENCODERS[fmt]
    return cls(run) if run is not None and getattr(cls, "takes_run", False) else cls()
