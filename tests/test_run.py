"""A run's identity: the gateway's job id, made at admission, keys everything and never changes.

Backends that send their own ``flow-job-id`` (the same one for every run, or a session id) are
recorded as ``backend_job_id`` and nothing else; long runs (many holds' worth) complete and are
charged in full whatever the backend, the pump path or the store.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from proxy.context import GATEWAY
from proxy.env import Env
from proxy.run import Run, new_job_id
from tests.conftest import SECRET, base_config, stream_chunks
from tests.dialects.test_langflow import frame
from tests.policies.test_credits import settled

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming"
LONG = 25_600  # characters: 6,400 tokens, more than six 1,000-token quanta


def test_a_run_cannot_be_renamed():
    run = Run(request=None, dialect="workflow", route="stream", flow_ref="wf", env=Env.Production,  # type: ignore[arg-type]
              stream=True, body=b"")
    first = run.job_id
    with pytest.raises(AttributeError):
        run.job_id = "backend-job"  # type: ignore[misc]
    assert run.job_id == first and len(first) == 26


def test_job_ids_are_ulids_in_time_order():
    """The hand-written encoding reads back with python-ulid as the time it was made, and sorts by it."""
    from ulid import ULID

    before = time.time()
    ids = [new_job_id() for _ in range(2000)]
    after = time.time()
    for job_id in ids:
        parsed = ULID.from_str(job_id)
        assert str(parsed) == job_id and before - 0.001 <= parsed.timestamp <= after + 0.001
    assert len(set(ids)) == len(ids)
    stamps = [ULID.from_str(j).milliseconds for j in ids]
    assert stamps == sorted(stamps)


async def test_a_backend_that_repeats_its_job_id_gets_three_runs(upstream, gateway, store_url):
    """Three runs through a backend that answers each with ``flow-job-id: backend-job``: three job ids,
    three ledger entries each charged what it streamed, nothing held, the backend's id on each record."""
    sizes = [400, 2_000, 6_000]  # 100, 500 and 1,500 tokens (the last one grows its hold)
    served = iter(sizes)

    async def same_id(request, seen):
        n = next(served)
        return await stream_chunks(request, ["abcd" * 25] * (n // 100), headers={"flow-job-id": "backend-job"})

    upstream.handle("/text", same_id)
    client = await gateway(base_config(upstream.url, store=store_url))
    job_ids = []
    for n in sizes:
        resp = await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})
        assert resp.status == 200
        assert len("".join(json.loads(await resp.read()))) == n
        job_ids.append(resp.headers["flow-job-id"])
    assert len(set(job_ids)) == 3 and "backend-job" not in job_ids
    entries = await settled(client, n=3)
    assert sorted((e["job_id"], e["credits"]) for e in entries) == sorted(
        (j, n // 4) for j, n in zip(job_ids, sizes, strict=True))
    acct = await client.app[GATEWAY].store.get_account("acme")
    assert acct.held == 0 and acct.spent == sum(sizes) // 4 and acct.balance == 100_000 - sum(sizes) // 4
    for job_id in job_ids:
        record = await (await client.get(f"/api/v1/jobs/{job_id}", headers={"x-api-key": SECRET})).json()
        assert record["job_id"] == job_id and record["backend_job_id"] == "backend-job"


def _langflow_body(text: str) -> list[bytes]:
    pieces = [text[i:i + 100] for i in range(0, len(text), 100)]
    return [frame("token", {"chunk": p, "id": "m1"}) for p in pieces] + [frame("end", {"result": {}})]


@pytest.mark.parametrize("backend_id", [None, "same-for-every-run"], ids=["own-id", "backend-id"])
@pytest.mark.parametrize("protocol", ["text", "langflow"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "python"])
async def test_a_long_run_completes_and_is_charged_in_full(upstream, gateway, store_url, backend_id, protocol,
                                                           compiled):
    text = ("The quick brown fox jumps over the lazy dog. " * 600)[:LONG]
    headers = {"flow-job-id": backend_id} if backend_id else {}

    async def long_text(request, seen):
        return await stream_chunks(request, [text[i:i + 100] for i in range(0, LONG, 100)], headers=headers)

    async def long_langflow(request, seen):
        return await stream_chunks(request, _langflow_body(text), content_type="text/event-stream",
                                   headers=headers)

    upstream.handle("/text", long_text)
    upstream.handle("/lf", long_langflow)
    cfg = base_config(upstream.url, store=store_url)
    cfg["server"] = {**cfg["server"], "compiled_text_path": compiled}
    client = await gateway(cfg)
    flow = "wf_text" if protocol == "text" else "wf_lf"
    token = (await (await client.get("/api/v1/token", headers={"x-api-key": SECRET})).json())["token"]
    resp = await client.post(f"/api/v1/run/{flow}/stream?token={token}")
    assert resp.status == 200
    body = (await resp.read()).decode()
    assert body == text
    job_id = resp.headers["flow-job-id"]
    assert job_id != backend_id
    entry = (await settled(client))[0]
    assert (entry["job_id"], entry["outcome"], entry["output_tokens"], entry["credits"]) == (
        job_id, "completed", LONG // 4, LONG // 4)
    assert entry.get("backend_job_id") == backend_id
    acct = await client.app[GATEWAY].store.get_account("acme")  # (settled with its ledger entry)
    assert acct.held == 0 and acct.balance == 100_000 - LONG // 4


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_mints_job_ids_of_its_own():
    """Workers are forked from one supervisor: none may replay another's job ids (a run's identity
    keys its hold and its ledger entry; two runs with one id would be settled as one)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, "\n".join(new_job_id()[10:] for _ in range(50)).encode())
        os._exit(0)
    os.close(w)
    mine = {new_job_id()[10:] for _ in range(50)}
    with os.fdopen(r, "rb") as f:
        child = set(f.read().decode().split("\n"))
    os.waitpid(pid, 0)
    assert len(child) == 50 and not mine & child
