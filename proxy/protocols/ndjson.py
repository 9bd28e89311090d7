"""Newline-delimited JSON: one JSON value per line, each an :class:`Item`.

A dict carrying an OpenAI-style ``usage`` also yields :class:`Usage`; ``{"error": "..."}`` is an
:class:`Error`; a line that is not JSON is passed on as a string Item. The stream just ends.
"""

from __future__ import annotations

import orjson

from ._lines import LineDecoder
from .events import Error, Event, Item, usage_from


def element_events(obj: object, out: list[Event]) -> None:
    """Events for one structured element (shared with the JSON-array decoder)."""
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, str) and len(obj) == 1:
            out.append(Error(err))
            return
        out.append(Item(obj))
        usage = usage_from(obj.get("usage"))
        if usage is not None:
            out.append(usage)
        return
    out.append(Item(obj))


class NdjsonDecoder(LineDecoder):
    __slots__ = ()

    def line(self, line: bytes, out: list[Event]) -> None:
        if not line.strip():
            return
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(Item(line.decode("utf-8", "replace")))
            return
        element_events(obj, out)
