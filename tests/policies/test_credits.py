"""Credits: metering from usage or characters, holds, cut/allow, settlement once, 402 before upstream."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.context import GATEWAY
from proxy.policies.credits import CHECKPOINT_EVERY_S, Credits, RunHold, credits_for, sweep_expired_holds
from proxy.store import Progress
from tests.conftest import SECRET, base_config, stream_chunks
from tests.dialects.test_langflow import frame

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming"


def lf_with_usage(output_tokens: int) -> list[bytes]:
    return [
        frame("token", {"chunk": "Hello there", "id": "m1"}),
        frame("add_message", {"id": "m1", "text": "Hello there", "sender": "Machine", "sender_name": "AI",
                              "properties": {"usage": {"input_tokens": 7, "output_tokens": output_tokens,
                                                       "total_tokens": output_tokens + 7}}}),
        frame("end", {"result": {"outputs": []}}),
    ]


async def settled(client, account="acme", n=1, wait_s=5.0) -> list[dict]:
    store = client.app[GATEWAY].store
    deadline = time.monotonic() + wait_s
    while True:
        entries = await store.ledger(account)
        if len(entries) >= n or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.02)


def test_quiet_limits_are_where_on_event_would_act():
    """quiet() (the compiled text path's limits) agrees with on_event: nothing to do at 4 × covered
    characters, a growth one character later; a checkpoint once the second is up."""
    from types import SimpleNamespace

    from proxy.protocols import Token
    from proxy.run import Meter

    credits = Credits(None, None)  # type: ignore[arg-type]
    hold = RunHold("acme", 1000, 10, 10, False, 0.0, covered=10, last_checkpoint=time.monotonic())
    run = SimpleNamespace(extra={"credits": hold}, meter=Meter())
    max_chars, until = credits.quiet(run)
    assert (max_chars, until) == (40, hold.last_checkpoint + CHECKPOINT_EVERY_S)
    run.meter.chars = max_chars
    assert credits.on_event(run, Token("x")) is None
    run.meter.chars = max_chars + 1
    grow = credits.on_event(run, Token("x"))
    assert grow is not None
    grow.close()  # (not awaited: the store is not needed to show it was asked for)
    run.meter.reported_output = 5
    assert credits.quiet(run) == (0, 0.0)  # tokens that do not follow characters: always ask
    run.extra = {}
    assert credits.quiet(run) == (None, float("inf"))


def test_credits_round_up():
    assert credits_for(120, 1000) == 120
    assert credits_for(1, 1) == 1
    assert credits_for(0, 1000) == 0
    assert credits_for(1500, 10) == 15


async def test_reported_usage_is_charged_exactly(upstream, gateway):
    async def lf(request, seen):
        return await stream_chunks(request, lf_with_usage(120), content_type="text/event-stream")

    upstream.handle("/lf", lf)
    client = await gateway(base_config(upstream.url))
    resp = await client.post(PB.format(flow="wf_lf"), headers={"x-api-key": SECRET})
    assert resp.status == 200
    await resp.read()
    entries = await settled(client)
    assert len(entries) == 1
    e = entries[0]
    assert e["credits"] == 120 and e["output_tokens"] == 120 and e["input_tokens"] == 7
    assert e["job_id"] == resp.headers["flow-job-id"] and e["flow"] == "wf_lf" and e["key_id"] == "key_acme"
    assert e["outcome"] == "completed" and e["env"] == "Production"
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert (acct.balance, acct.held, acct.spent) == (100000 - 120, 0, 120)


async def test_text_is_charged_by_characters(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 25] * 4)  # 400 characters

    upstream.handle("/text", text)
    client = await gateway(base_config(upstream.url))
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 200
    entries = await settled(client)
    assert entries[0]["credits"] == 100 and entries[0]["output_tokens"] == 100


async def test_disconnect_charges_what_was_metered(upstream, gateway):
    sent30 = asyncio.Event()

    async def hundred(request, seen):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(100):
            await resp.write(b"abcd")  # one token each
            if i == 29:
                sent30.set()
                await asyncio.sleep(30)  # until the client goes away
        await resp.write_eof()
        return resp

    upstream.handle("/text", hundred)
    client = await gateway(base_config(upstream.url))
    resp = await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})
    await sent30.wait()
    got = b""
    while got.count(b"abcd") < 30:
        got += await resp.content.readany()
    resp.close()
    entries = await settled(client)
    assert len(entries) == 1
    assert entries[0]["outcome"] == "client_disconnected"
    assert entries[0]["output_tokens"] == 30 and entries[0]["credits"] == 30


@pytest.mark.parametrize("dialect", ["profitbase", "workflow", "langflow"])
async def test_no_credits_is_402_before_any_upstream_request(upstream, gateway, dialect):
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 0
    client = await gateway(cfg)
    if dialect == "profitbase":
        resp = await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})
        body = await resp.json(content_type=None)
        assert resp.headers["Content-Type"].startswith("application/problem+json") and body["code"] == "no_credits"
    elif dialect == "workflow":
        tok = (await (await client.get("/api/v1/token", headers={"x-api-key": SECRET})).json())["token"]
        resp = await client.post(f"/api/v1/run/wf_text/stream?token={tok}")
        body = await resp.json()
        assert body == {"success": False, "error": body["error"], "code": "no_credits"}
    else:
        resp = await client.post("/langflow/api/v1/run/wf_text?stream=true", headers={"x-api-key": SECRET})
        assert set(await resp.json()) == {"detail"}
    assert resp.status == 402
    assert upstream.requests == []


def endless_tokens(count: int):
    async def handler(request, seen):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(count):
            await resp.write(b"abcd" * 10)  # 10 tokens a chunk
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    return handler


async def test_cut_ends_the_stream_and_never_goes_below_zero(upstream, gateway):
    upstream.handle("/text", endless_tokens(100))  # 1,000 tokens
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 250
    cfg["limits"] = {"credit_quantum_tokens": 100}
    client = await gateway(cfg)
    resp = await client.post("/langflow/api/v1/run/wf_text?stream=true", headers={"x-api-key": SECRET})
    body = await resp.read()
    last = json.loads(body.strip().split(b"\n\n")[-1])
    assert last["event"] == "error"
    entries = await settled(client)
    assert entries[0]["outcome"] == "credits_cut"
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert acct.balance >= 0 and acct.held == 0 and acct.balance == 250 - entries[0]["credits"]
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    if acct.balance == 0:
        assert resp.status == 402


async def test_cut_on_a_passed_through_stream_breaks_it_off_and_never_goes_below_zero(upstream, gateway):
    upstream.handle("/text", endless_tokens(100))  # text in, text out: the bytes pass through
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 250
    cfg["limits"] = {"credit_quantum_tokens": 100}
    client = await gateway(cfg)
    mint = await client.get("/api/v1/token", headers={"x-api-key": SECRET})
    token = (await mint.json())["token"]
    resp = await client.post(f"/api/v1/run/wf_text/stream?token={token}")
    assert resp.status == 200
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):  # no clean end: plain text has no error event
        async for chunk in resp.content.iter_any():
            received += chunk
    assert 0 < len(received) < 4000
    entries = await settled(client)
    assert entries[0]["outcome"] == "credits_cut"
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert acct.balance >= 0 and acct.held == 0 and acct.balance == 250 - entries[0]["credits"]


async def test_allow_finishes_within_one_quantum_past_the_balance(upstream, gateway):
    """allow: a run may go one quantum past what the balance could hold (and the balance negative by
    that much at most); one that needs more is cut there."""
    cfg = base_config(upstream.url)
    cfg["accounts"]["acme"]["initial_credits"] = 250
    cfg["limits"] = {"credit_quantum_tokens": 100}
    cfg["flows"][0]["on_credits_exhausted"] = "allow"
    upstream.handle("/text", endless_tokens(30))  # 300 tokens: 50 past the balance
    client = await gateway(cfg)
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 200
    assert len((await resp.json())["result"]) == 1200
    entries = await settled(client)
    assert entries[0]["credits"] == 300 and entries[0]["outcome"] == "completed"
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert acct.balance == 250 - 300 and acct.held == 0
    resp = await client.post("/api/v1/run/wf_text", headers={"x-api-key": SECRET})
    assert resp.status == 402

    cfg["accounts"]["acme"]["initial_credits"] = 250
    upstream.handle("/text", endless_tokens(100))  # 1,000 tokens: cut at 250 + 100
    client = await gateway(cfg)
    resp = await client.post("/langflow/api/v1/run/wf_text?stream=true", headers={"x-api-key": SECRET})
    last = json.loads((await resp.read()).strip().split(b"\n\n")[-1])
    assert last["event"] == "error"
    entries = await settled(client)
    assert entries[0]["credits"] == 350 and entries[0]["outcome"] == "credits_cut"
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert acct.balance == -100 and acct.held == 0


async def test_hold_is_checkpointed_and_an_expired_hold_is_swept_once(upstream, gateway):
    cfg = base_config(upstream.url)
    client = await gateway(cfg)
    gw = client.app[GATEWAY]
    store = gw.store
    assert await store.open_hold("job-dead", "acme", 1000, time.time() - 1, {"flow": "wf_text"}) == 1000
    await store.checkpoint([Progress("job-dead", "acme", 42, 3, 42, time.time() - 1)])
    assert await sweep_expired_holds(gw) == 1
    assert await sweep_expired_holds(gw) == 0
    entries = await store.ledger("acme")
    assert [(e["job_id"], e["credits"], e["output_tokens"]) for e in entries] == [("job-dead", 42, 42)]
    acct = await store.get_account("acme")
    assert acct.held == 0 and acct.balance == 100000 - 42


async def test_a_fast_stream_holds_ahead_instead_of_a_store_write_per_quantum(upstream, gateway):
    """800 quanta crossed in a fraction of a second: far fewer growths than quanta, the charge exact."""
    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 4000] * 200, delay=0.002)  # 200 chunks × 4,000 tokens

    upstream.handle("/text", text)
    client = await gateway(base_config(upstream.url, accounts={"acme": {"initial_credits": 10**9},
                                                                 "other": {"initial_credits": 0}}))
    store = client.app[GATEWAY].store
    grows: list[int] = []
    real_grow = store.grow_hold

    async def counting_grow(job_id, account, want, expires_at, **kwargs):
        grows.append(want)
        return await real_grow(job_id, account, want, expires_at, **kwargs)

    store.grow_hold = counting_grow
    resp = await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})
    assert resp.status == 200 and len("".join(json.loads(await resp.read()))) == 200 * 16000
    entries = await settled(client)
    assert entries[0]["output_tokens"] == 800_000 and entries[0]["credits"] == 800_000
    assert 0 < len(grows) < 60, len(grows)  # a quantum at a time would be 200 growths of 4+ quanta
    acct = await store.get_account("acme")
    assert (acct.held, acct.spent) == (0, 800_000)


async def test_ai_sdk_finish_part_usage_is_charged(upstream, gateway):
    """An AI SDK data stream backend: its d: usage is what is charged, served as plain text."""
    async def sdk(request, seen):
        return await stream_chunks(request, [b'0:"Hi "\n', b'0:"there"\n',
                                             b'd:{"finishReason":"stop","usage":{"promptTokens":9,'
                                             b'"completionTokens":120}}\n'])

    upstream.handle("/sdk", sdk)
    raw = base_config(upstream.url)
    raw["backends"]["sdk"] = {"url": upstream.url, "protocol": "ai-sdk"}
    raw["flows"].append({"id": "wf_sdk", "owner": "acme", "tenant": "t1", "workspace": "w1",
                         "targets": {"Production": {"backend": "sdk", "path": "/sdk"}}})
    client = await gateway(raw)
    resp = await client.post(PB.format(flow="wf_sdk"), headers={"x-api-key": SECRET})
    assert resp.status == 200 and json.loads(await resp.read()) == ["Hi ", "there"]
    entries = await settled(client)
    assert (entries[0]["credits"], entries[0]["output_tokens"], entries[0]["input_tokens"]) == (120, 120, 9)
    assert entries[0]["outcome"] == "completed"


@pytest.mark.parametrize("per_1k", [1, 7, 250, 1000, 1001, 3333, 100000])
def test_covered_tokens_is_the_exact_edge_of_what_a_hold_pays_for(per_1k):
    from proxy.policies.credits import covered_tokens

    for held in (0, 1, 2, 3, 999, 1000, 12345):
        edge = covered_tokens(held, per_1k)
        assert credits_for(edge, per_1k) <= held < credits_for(edge + 1, per_1k)
