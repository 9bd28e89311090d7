"""A stream's head and end on flowgate's front, at their edges, over raw client sockets: a backend
body that ends with its head, pipelined requests, bodies in and after the head's read, a run cap
that fires as the stream completes, clients that leave at every stage. Whatever happens, a
response is whole and alone on its connection: nothing follows a chunked terminator."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from tests.front.raw import connect, head, post, response
from tests.stream.test_pump import mint
from tests.upstream.hostile import (  # noqa: F401 - backend_fixture: the `backend` fixture
    CHUNKED_HEAD,
    PATHS,
    backend_fixture,
    compiled_fixture,
    config,
)

PB = "/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming"
LF = "/langflow/api/v1/run/wf_text?stream=true"


async def nothing_more(reader: asyncio.StreamReader, within: float = 0.3) -> bytes:
    """What the gateway sends after a response within ``within`` s (b"" if nothing, or closed)."""
    try:
        return await asyncio.wait_for(reader.read(65536), within)
    except TimeoutError:
        return b""


@contextlib.asynccontextmanager
async def alone(client):
    """A raw connection to the gateway; the block's responses must be all it gets: nothing
    follows them (a second response, bytes after a terminator) before the connection closes."""
    reader, writer = await connect(client)
    try:
        yield reader, writer
        assert await nothing_more(reader) == b""
    finally:
        writer.close()


async def request_line(client, dialect: str) -> bytes:
    if dialect == "profitbase":
        return post(PB)
    if dialect == "langflow":
        return post(LF, b'{"input_value": "x"}')
    token = await mint(client)
    return head("POST", f"/api/v1/run/wf_text/stream?token={token}&protocol=ui", "Content-Length: 2") + b"{}"


def ui_parts(body: bytes) -> list:
    return [e[6:] if e == b"data: [DONE]" else json.loads(e[6:]) for e in body.split(b"\n\n") if e]


@PATHS
@pytest.mark.parametrize("front", ["flowgate", "aiohttp"])
@pytest.mark.parametrize("dialect", ["profitbase", "langflow", "workflow-ui"])
async def test_an_empty_body_that_ends_with_its_head_is_one_whole_response_and_the_next_is_served(
        backend, gateway, compiled, dialect, front):
    b = await backend(lambda n: [CHUNKED_HEAD + b"0\r\n\r\n"])
    client = await gateway(config(b.url, compiled, server={"front": front}))
    async with alone(client) as (reader, writer):
        for _ in range(2):  # twice on one connection: the first left nothing behind it
            writer.write(await request_line(client, dialect))
            status, headers, body = await asyncio.wait_for(response(reader), 5)
            assert status == 200 and headers["transfer-encoding"] == "chunked"
            if dialect == "profitbase":
                assert body == b"[]"
            elif dialect == "workflow-ui":
                parts = ui_parts(body)
                assert sum(1 for p in parts if isinstance(p, dict) and p["type"] == "finish") == 1
                assert parts[-1] == b"[DONE]" and parts.count(b"[DONE]") == 1
            else:
                assert b'"event":"end"' in body or body == b"", body


@PATHS
@pytest.mark.parametrize("front", ["flowgate", "aiohttp"])
async def test_pipelined_requests_each_with_its_body_in_one_write_get_two_responses_in_order(
        backend, gateway, compiled, front):
    def script(n):
        word = b"r%d" % n
        return [CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(word), word)]

    b = await backend(script)
    client = await gateway(config(b.url, compiled, server={"front": front}))
    async with alone(client) as (reader, writer):
        writer.write(post(PB, b'{"a": 1}') + post(PB, b'{"b": 2}') + post(PB, b'{"c": 3}'))
        for n in (1, 2, 3):
            status, _, body = await asyncio.wait_for(response(reader), 5)
            assert (status, json.loads(body)) == (200, [f"r{n}"])


@PATHS
async def test_a_body_larger_than_the_first_read_and_100_continue(backend, gateway, compiled):
    b = await backend(lambda n: [CHUNKED_HEAD + b"2\r\nok\r\n0\r\n\r\n"])
    client = await gateway(config(b.url, compiled))
    body = b'{"input_value": "' + b"x" * 600 + b'"}'
    async with alone(client) as (reader, writer):
        request = post(LF, body)
        cut = len(request) - 400
        writer.write(request[:cut])  # the head and part of the body
        await asyncio.sleep(0.2)
        writer.write(request[cut:])
        status, _, out = await asyncio.wait_for(response(reader), 5)
        assert status == 200 and b"ok" in out
        writer.write(post(LF, body, "Expect: 100-continue")[:-len(body)])  # the head alone: 100, then the body
        status, _, _ = await asyncio.wait_for(response(reader), 5)
        assert status == 100
        writer.write(body)
        status, _, out = await asyncio.wait_for(response(reader), 5)
        assert status == 200 and b"ok" in out
        writer.write(post(LF, body, "Expect: 100-continue") + post(PB))  # the body came: no 100; pipelined
        status, _, out = await asyncio.wait_for(response(reader), 5)
        assert status == 200 and b"ok" in out
        status, _, out = await asyncio.wait_for(response(reader), 5)
        assert status == 200 and json.loads(out) == ["ok"]


@PATHS
@pytest.mark.parametrize("dialect", ["profitbase", "langflow"])
async def test_a_run_cap_that_fires_as_the_stream_completes_never_writes_after_the_terminator(
        backend, gateway, compiled, dialect):
    """The backend ends its body right around the run cap: the client gets a whole response (a
    clean end, or the cut's) or a visibly incomplete one, and never bytes after a terminator."""
    cap = 0.3
    delays = [cap + d for d in (-0.02, -0.01, -0.005, 0.0, 0.002, 0.005, 0.01, 0.02)]
    b = await backend(lambda n: [CHUNKED_HEAD + b"2\r\nab\r\n", delays[(n - 1) % len(delays)],
                                 b"2\r\ncd\r\n0\r\n\r\n"])
    cfg = config(b.url, compiled)
    cfg["flows"][0]["max_duration_s"] = cap
    client = await gateway(cfg)
    for _ in delays:
        reader, writer = await connect(client)
        try:
            writer.write(await request_line(client, dialect))
            try:
                status, _, body = await asyncio.wait_for(response(reader), 5)
            except (asyncio.IncompleteReadError, ConnectionResetError, ValueError):
                continue  # aborted: visibly incomplete
            assert status == 200
            assert await nothing_more(reader) == b"", body
        finally:
            writer.close()


@PATHS
@pytest.mark.parametrize("stage", ["before_head", "after_head", "after_body"])
async def test_a_client_that_leaves_at_any_stage_leaves_the_gateway_serving(backend, gateway, compiled, stage,
                                                                            capfd):
    b = await backend(lambda n: [0.3, CHUNKED_HEAD, 0.3, b"2\r\nab\r\n", 0.3, b"0\r\n\r\n"])
    client = await gateway(config(b.url, compiled))
    reader, writer = await connect(client)
    writer.write(post(PB))
    if stage != "before_head":
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    if stage == "after_body":
        await asyncio.wait_for(reader.readuntil(b"ab"), 5)
    writer.close()
    await asyncio.sleep(1.2)
    reader, writer = await connect(client)  # and the next client is served
    writer.write(post(PB))
    status, _, body = await asyncio.wait_for(response(reader), 5)
    writer.close()
    assert status == 200 and json.loads(body) == ["ab"]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed" not in err, err


@PATHS
@pytest.mark.parametrize("front", ["flowgate", "aiohttp"])
async def test_a_run_cap_that_fires_in_the_step_the_stream_completes_keeps_the_completed_end(
        backend, gateway, compiled, front, monkeypatch):
    """Deterministic: the cap's timer fires in the same loop step as the body's end (queued just
    before it). The run keeps its completed outcome and the client a clean end, never the cut's
    error event after a terminator already written."""
    from proxy.stream.pump import Pump

    timers: list = []
    real_timeout_at, real_end = asyncio.timeout_at, Pump._end

    def timeout_at(when):
        timers.append(real_timeout_at(when))
        return timers[-1]

    def end(self, outcome):
        if outcome == "completed" and not self.ended:
            timers[-1].reschedule(asyncio.get_running_loop().time())  # fires first, in the next step
        real_end(self, outcome)

    monkeypatch.setattr(asyncio, "timeout_at", timeout_at)
    monkeypatch.setattr(Pump, "_end", end)
    b = await backend(lambda n: [CHUNKED_HEAD + b"2\r\nab\r\n", 0.1, b"0\r\n\r\n"])
    client = await gateway(config(b.url, compiled, server={"front": front}))
    async with alone(client) as (reader, writer):
        for _ in range(2):
            writer.write(post(LF, b'{"input_value": "x"}'))
            status, _, body = await asyncio.wait_for(response(reader), 5)
            assert status == 200 and b'"event":"error"' not in body and b'"event":"end"' in body, body
