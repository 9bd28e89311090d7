"""AI SDK data stream: text parts, usage from e:/d: parts, errors, other parts, a missing finish."""

from __future__ import annotations

from proxy.protocols import End, Error, Item, Token, Usage, new_decoder

STREAM = (b'f:{"messageId":"m1"}\n0:"Hel"\n0:"lo"\n9:{"toolCallId":"c1","toolName":"x","args":{}}\n'
          b'e:{"finishReason":"stop","usage":{"promptTokens":10,"completionTokens":20},"isContinued":false}\n'
          b'd:{"finishReason":"stop","usage":{"promptTokens":10,"completionTokens":20}}\n')


def test_parts_to_events_across_any_split():
    whole = new_decoder("ai-sdk").feed(STREAM)
    assert whole[0:2] == [Token("Hel"), Token("lo")]  # the f: step start is framing, dropped
    assert whole[2] == Item({"type": "9", "value": {"toolCallId": "c1", "toolName": "x", "args": {}}})
    assert whole[3] == Usage(10, 20, None) and whole[4] == Usage(10, 20, None)
    assert type(whole[5]) is End and len(whole) == 6
    for cut in range(1, len(STREAM)):
        d = new_decoder("ai-sdk")
        assert d.feed(STREAM[:cut]) + d.feed(STREAM[cut:]) + d.close() == whole


def test_error_part_and_a_stream_without_its_finish_part():
    d = new_decoder("ai-sdk")
    assert d.feed(b'0:"partial"\n3:"model overloaded"\n') == [Token("partial"), Error("model overloaded")]
    d = new_decoder("ai-sdk")
    d.feed(b'0:"cut off"\n')
    assert d.close() == [Error("the backend stream ended before its finish part")]
    assert new_decoder("ai-sdk").feed(b"\nnot a part\n0:not json\n") == []
