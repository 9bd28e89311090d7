"""bench.micro runs (it builds a pump and a sink by hand: a change to either must keep it working)."""

from __future__ import annotations

import pytest

from bench import micro
from proxy.stream.pump import TextPath

CASES = [("text", "text"), ("text", "json-array"), ("text", "ui"), ("langflow", "text"), ("sse", "text"),
         ("ai-sdk", "json-array"), ("ndjson", "json-array")]


@pytest.mark.parametrize(("protocol", "output"), CASES)
async def test_every_case_measures(protocol, output):
    assert await micro.per_chunk_us(output, n=50, protocol=protocol) > 0
    if TextPath is not None and protocol != "ndjson":
        assert await micro.per_chunk_us(output, compiled=True, n=50, protocol=protocol) > 0
