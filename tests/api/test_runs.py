"""The run's lifecycle in the handler: what it leaves behind once a run is over."""

from __future__ import annotations

import asyncio
import gc

from tests.conftest import SECRET, base_config

PB = "/api/v1/tenants/t1/workspaces/w1/flows/{flow}/run-streaming"


async def test_a_finished_run_leaves_no_cycle_for_the_gc(text_upstream, gateway):
    """Run and request must die by reference counting: with thousands of open streams the cyclic
    GC's full passes stall the loop for milliseconds, so none of its work may come from runs."""
    upstream = text_upstream
    client = await gateway(base_config(upstream.url))
    gc.collect()
    gc.disable()
    try:
        done = await client.post(PB.format(flow="wf_text"), headers={"x-api-key": SECRET})
        await done.read()
        cut = await client.post(PB.format(flow="wf_text") + "?env=Development", headers={"x-api-key": SECRET})
        await cut.content.readany()
        cut.close()  # the client goes away mid-stream
        await asyncio.wait_for(upstream.last.closed_early.wait(), 5)
        await asyncio.sleep(0.1)  # both handlers have settled and logged
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage} & {"Run", "FrontRequest", "RunHold", "Meter"})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
