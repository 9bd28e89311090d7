"""The AI SDK UI message stream encoder: part shapes, the finish usage, the error ending."""

from __future__ import annotations

import json
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from proxy.protocols import ENCODERS, End, Item, Token, Usage, new_encoder
from proxy.protocols.ui import UiEncoder
from proxy.run import Meter


def parts(data: bytes) -> list:
    out = []
    for event in data.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: ") and b"\n" not in event
            raw = event[6:].decode()
            out.append(raw if raw == "[DONE]" else json.loads(raw))
    return out


def run(job_id="01JOB", reported_input=None, chars=0):
    return SimpleNamespace(job_id=job_id, meter=Meter(chars=chars, reported_input=reported_input))


def test_registered_and_built_with_the_run():
    assert ENCODERS["ui"] is UiEncoder
    enc = new_encoder("ui", run())
    assert parts(enc.open()) == [{"type": "start", "messageId": "01JOB"}]
    assert parts(new_encoder("ui").open()) == [{"type": "start"}]  # no run: no id of its own making


def test_a_run_in_parts():
    r = run(reported_input=5)
    enc = new_encoder("ui", r)
    out = enc.open()
    for ev in (Token("Hel"), Usage(5, None), Token("lo"), Token(""), Item({"text": "!"}), End({"x": 1})):
        r.meter.observe(ev)
        out += enc.encode(ev)
    out += enc.close()
    assert parts(out) == [
        {"type": "start", "messageId": "01JOB"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hel"},
        {"type": "text-delta", "id": "text-0", "delta": "lo"},
        {"type": "text-delta", "id": "text-0", "delta": "!"},
        {"type": "text-end", "id": "text-0"},
        {"type": "finish", "finishReason": "stop",
         "messageMetadata": {"usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7}, "jobId": "01JOB"}},
        "[DONE]",
    ]


def test_an_item_without_text_is_a_data_part():
    enc = UiEncoder()
    assert parts(enc.encode(Item({"tool": "search", "n": [1, 2]}))) == [
        {"type": "data-item", "data": {"tool": "search", "n": [1, 2]}}]


def test_an_error_ends_without_finish():
    enc = UiEncoder(run())
    assert parts(enc.error("cut")) == [{"type": "error", "errorText": "cut"}, "[DONE]"]  # no text part opened
    enc.encode_text("a")
    assert parts(enc.error("cut")) == [{"type": "text-end", "id": "text-0"}, {"type": "error", "errorText": "cut"},
                                       "[DONE]"]


def test_an_empty_run_finishes_without_a_text_part():
    assert [p if isinstance(p, str) else p["type"] for p in parts(UiEncoder(run()).close())] == ["finish", "[DONE]"]


@given(st.lists(st.text(), max_size=6))
def test_any_text_round_trips_as_one_event_per_piece(pieces):
    enc = UiEncoder(run())
    out = b"".join(enc.encode_text(p) for p in pieces)
    got = parts(out)
    deltas = [p["delta"] for p in got if p["type"] == "text-delta"]
    assert deltas == pieces
