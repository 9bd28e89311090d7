"""Job records behind the flow-job-id header."""

from __future__ import annotations

import asyncio

from tests.conftest import OTHER_SECRET, SECRET, base_config, stream_chunks


async def test_finished_run_has_a_record_for_its_owner_only(upstream, gateway):
    async def text(request, seen):
        return await stream_chunks(request, ["abcd" * 10])

    upstream.handle("/text", text)
    client = await gateway(base_config(upstream.url))
    resp = await client.post("/api/v1/tenants/t1/workspaces/w1/flows/wf_text/run-streaming",
                             headers={"x-api-key": SECRET})
    await resp.read()
    job_id = resp.headers["flow-job-id"]
    for _ in range(100):
        got = await client.get(f"/api/v1/jobs/{job_id}", headers={"x-api-key": SECRET})
        if got.status == 200:
            break
        await asyncio.sleep(0.02)
    record = await got.json()
    assert record["outcome"] == "completed" and record["output_tokens"] == 10 and record["credits"] == 10
    assert record["flow"] == "wf_text" and record["env"] == "Production" and record["duration_s"] >= 0
    assert record["ended_at"] >= record["started_at"]
    other = await client.get(f"/api/v1/jobs/{job_id}", headers={"x-api-key": OTHER_SECRET})
    assert other.status == 404
    assert (await client.get("/api/v1/jobs/nope", headers={"x-api-key": SECRET})).status == 404
    assert (await client.get(f"/api/v1/jobs/{job_id}")).status == 401
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers={"x-api-key": "bad"})).status == 401
