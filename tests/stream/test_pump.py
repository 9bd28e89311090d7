"""The pump: chunk-by-chunk delivery, the run cap, client disconnects, backends that die mid-stream,
and the transcoding of a Langflow backend to every dialect."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import SECRET, base_config, never_ending, stream_chunks
from tests.dialects.test_langflow import LF_BODY, events

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming"


async def mint(client) -> str:
    resp = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    return (await resp.json())["token"]


async def open_stream(client, dialect: str, flow: str):
    if dialect == "profitbase":
        return await client.post(PB.format(flow=flow), headers={"x-api-key": SECRET})
    if dialect == "workflow":
        return await client.post(f"/api/v1/run/{flow}/stream?token={await mint(client)}")
    if dialect == "workflow-ui":  # the AI SDK UI message stream
        return await client.post(f"/api/v1/run/{flow}/stream?token={await mint(client)}&protocol=ui")
    return await client.post(f"/langflow/api/v1/run/{flow}?stream=true", headers={"x-api-key": SECRET})


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "langflow", "workflow-ui"])
async def test_each_chunk_reaches_the_client_before_the_backend_sends_the_next(upstream, gateway, dialect):
    """Lock-step: the backend writes line N+1 only after the client has received line N."""
    received = asyncio.Event()

    async def lockstep(request, seen):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(5):
            received.clear()
            await resp.write(f"line{i}\n".encode())
            await asyncio.wait_for(received.wait(), 5)
        await resp.write_eof()
        return resp

    upstream.handle("/text", lockstep)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, dialect, "wf_text")
    assert resp.status == 200
    seen = b""
    for i in range(5):
        while f"line{i}".encode() not in seen:
            seen += await asyncio.wait_for(resp.content.readany(), 5)
        received.set()
    seen += await resp.read()
    assert resp.status == 200 and b"line4" in seen


@pytest.mark.parametrize("dialect,complete", [("profitbase", False), ("workflow", False), ("langflow", True)])
async def test_run_cap_ends_a_never_ending_stream_visibly(upstream, gateway, dialect, complete):
    upstream.handle("/text", never_ending)
    cfg = base_config(upstream.url)
    cfg["flows"][0]["max_duration_s"] = 0.5
    client = await gateway(cfg)
    resp = await open_stream(client, dialect, "wf_text")
    assert resp.status == 200
    if complete:  # Langflow events have an error event: a clean end after it, and no `end` event
        evs = events(await asyncio.wait_for(resp.read(), 5))
        assert evs[-1]["event"] == "error" and all(e["event"] != "end" for e in evs)
    else:  # text and JSON array have none: the body is aborted, never a clean end
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 5)
    await asyncio.wait_for(upstream.last.closed_early.wait(), 5)


async def test_run_cap_never_exceeds_the_global_limit(upstream, gateway):
    cfg = base_config(upstream.url)
    cfg["limits"] = {"max_duration_s": 0.5}
    upstream.handle("/text", never_ending)
    client = await gateway(cfg)
    resp = await open_stream(client, "profitbase", "wf_text")
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 5)


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "langflow"])
async def test_client_disconnect_closes_the_backend_request(upstream, gateway, dialect):
    upstream.handle("/text", never_ending)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, dialect, "wf_text")
    await resp.content.readany()
    resp.close()  # the client goes away mid-stream
    await asyncio.wait_for(upstream.last.closed_early.wait(), 5)


async def test_backend_dying_mid_stream_breaks_the_client_stream(upstream, gateway):
    async def dies(request, seen):
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"partial ")
        await asyncio.sleep(0.05)
        request.transport.close()
        return resp

    upstream.handle("/text", dies)
    client = await gateway(base_config(upstream.url))
    for dialect in ("profitbase", "workflow"):
        resp = await open_stream(client, dialect, "wf_text")
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(resp.read(), 5)
    resp = await open_stream(client, "langflow", "wf_text")
    evs = events(await asyncio.wait_for(resp.read(), 5))
    assert evs[-1]["event"] == "error"


async def test_langflow_backend_cut_before_end_event_is_an_error(upstream, gateway):
    async def truncated(request, seen):
        return await stream_chunks(request, LF_BODY[:3], content_type="text/event-stream")

    upstream.handle("/lf", truncated)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, "profitbase", "wf_lf")
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(resp.read(), 5)
    resp = await open_stream(client, "langflow", "wf_lf")
    evs = events(await resp.read())
    assert evs[-1]["event"] == "error"


async def test_langflow_backend_served_as_text_and_as_json_array(upstream, gateway):
    async def lf(request, seen):
        return await stream_chunks(request, LF_BODY, content_type="text/event-stream")

    upstream.handle("/lf", lf)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, "workflow", "wf_lf")
    assert await resp.text() == "Hello"
    resp = await open_stream(client, "profitbase", "wf_lf")
    assert "".join(json.loads(await resp.read())) == "Hello"


async def test_json_array_backend_passes_through_to_profitbase(upstream, gateway):
    body = [b'[{"a": 1}', b', "two"', b", [3]]"]

    async def arr(request, seen):
        return await stream_chunks(request, body, content_type="application/json")

    upstream.handle("/arr", arr)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, "profitbase", "wf_arr")
    assert await resp.read() == b"".join(body)
    resp = await open_stream(client, "workflow", "wf_arr")
    assert "two" in await resp.text()


async def test_a_backend_job_id_never_renames_the_run(upstream, gateway):
    """The backend's own flow-job-id is recorded as backend_job_id; the header is the gateway's."""
    async def with_id(request, seen):
        return await stream_chunks(request, ["x"], headers={"flow-job-id": "backend-job-7"})

    upstream.handle("/text", with_id)
    client = await gateway(base_config(upstream.url))
    resp = await open_stream(client, "profitbase", "wf_text")
    await resp.read()
    job_id = resp.headers["flow-job-id"]
    assert job_id != "backend-job-7" and len(job_id) == 26  # a ULID made at admission
    from tests.policies.test_credits import settled
    entries = await settled(client)
    assert entries[0]["job_id"] == job_id and entries[0]["backend_job_id"] == "backend-job-7"


@pytest.mark.parametrize("dialect", ["profitbase", "workflow"])
async def test_chunks_behind_a_growing_hold_keep_their_order(upstream, gateway, tmp_path, dialect):
    """With a 1-token quantum on SQLite every chunk grows the credit hold in the store, so the pump
    waits for it while the backend's later chunks (sent back to back, parsed from one read) are
    held: the client still gets every chunk once, in order, and the run is charged for all."""
    words = [f"w{i:03d}" for i in range(300)]  # 4 chars = 1 token each
    upstream.handle("/text", lambda request, seen: stream_chunks(request, words))
    cfg = base_config(upstream.url, store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["limits"] = {"credit_quantum_tokens": 1}
    client = await gateway(cfg)
    resp = await open_stream(client, dialect, "wf_text")
    body = await resp.read()
    text = "".join(json.loads(body)) if dialect == "profitbase" else body.decode()
    assert text == "".join(words)
    from tests.policies.test_credits import settled
    entries = await settled(client)
    assert entries[0]["outcome"] == "completed" and entries[0]["credits"] == 300


class _Upstream:
    headers: dict[str, str] = {}

    def attach(self, pump) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@pytest.mark.parametrize("output,expected", [("text", [b"", b"ab", b"cd"]), ("json-array", [b"[", b'"ab"'])])
async def test_a_hook_that_stops_the_run_ends_it_at_that_chunk_on_either_path(output, expected):
    from types import SimpleNamespace

    from proxy.env import Env
    from proxy.policies import Chain, StopRun
    from proxy.protocols import new_decoder, new_encoder
    from proxy.run import Run
    from proxy.stream.pump import Pump

    seen: list[str] = []

    def hook(run, ev):
        seen.append(ev.text)
        if len(seen) == 2:
            raise StopRun("credits_cut", "out of credits")

    run = Run(request=None, dialect="workflow", route="stream", flow_ref="wf", env=Env.Production,  # type: ignore[arg-type]
              stream=False, body=b"")
    run.flow = SimpleNamespace(id="wf")  # type: ignore[assignment]
    pump = Pump(run, _Upstream(), new_decoder("text"), new_encoder(output), output == "text",  # type: ignore[arg-type]
                Chain.of_hooks([hook]))
    parts: list[bytes] = []
    pump.collect_into(parts)
    done = pump.pump()
    for chunk in (b"ab", b"cd", b"ef"):
        pump.body(chunk)
        pump.flush()
    assert await asyncio.wait_for(done, 5) == "credits_cut" and pump.message == "out of credits"
    assert seen == ["ab", "cd"] and parts == expected and run.meter.chars == 4


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_a_connection_released_while_paused_for_a_hold_serves_the_next_run(upstream, gateway, tmp_path,
                                                                                  compiled):
    """A hold that grows on the last chunk pauses the backend connection; the body's end arrives
    meanwhile. The connection goes back to the pool reading again: the next run on it is served."""
    sizes = iter([200] * 3 + [400, 200, 200])

    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * (next(sizes) // 4)])

    upstream.handle("/text", text)
    cfg = base_config(upstream.url, store=f"sqlite:///{tmp_path / 'fg.db'}")
    cfg["server"] = {**cfg["server"], "compiled_text_path": compiled}
    cfg["flows"][0]["max_duration_s"] = 3
    client = await gateway(cfg)
    for n in [200] * 3 + [400, 200, 200]:  # the 400-character run outgrows its first hold (50 tokens)
        resp = await asyncio.wait_for(open_stream(client, "workflow", "wf_text"), 2)
        assert resp.status == 200 and len(await asyncio.wait_for(resp.read(), 2)) == n
