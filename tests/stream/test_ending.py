"""How a client's stream ends (proxy/stream/ending.py), against a backend that keeps sending."""

from __future__ import annotations

import asyncio

from proxy.stream import sinks
from tests.front.raw import connect, post, response
from tests.upstream.hostile import (  # noqa: F401 - backend_fixture: the `backend` fixture
    CHUNKED_HEAD,
    PATHS,
    backend_fixture,
    compiled_fixture,
    config,
)


@PATHS
async def test_nothing_from_the_backend_follows_the_end_of_a_stream_cut_at_its_deadline(backend, gateway,
                                                                                        monkeypatch, compiled):
    """The run cap cuts a stream whose backend keeps sending; on the aiohttp front the end is
    written, then a drain awaited (the client's socket above its high-water mark): a backend chunk
    read meanwhile must not reach the client's connection after the chunked terminator, where the
    client would read it as the start of its next response."""

    async def eof_then_drain(self):
        await self.resp.write_eof()
        await asyncio.sleep(0.2)  # as aiohttp's drain waits for a client that is not reading

    monkeypatch.setattr(sinks.AiohttpStream, "write_eof", eof_then_drain)
    b = await backend(lambda n: [CHUNKED_HEAD] + [p for _ in range(2000) for p in (0.005, b"3\r\nabc\r\n")])
    cfg = config(b.url, compiled, server={"front": "aiohttp"})
    cfg["flows"][0]["max_duration_s"] = 0.3
    client = await gateway(cfg)
    reader, writer = await connect(client)
    writer.write(post("/langflow/api/v1/run/wf_text?stream=true", b'{"input_value": "x"}'))
    status, _, body = await asyncio.wait_for(response(reader), 5)
    assert status == 200 and b'"event":"error"' in body  # Langflow events: an error event, then a clean end
    extra = b""
    try:
        extra = await asyncio.wait_for(reader.read(65536), 0.6)
    except TimeoutError:
        pass
    writer.close()
    assert extra == b"", extra
