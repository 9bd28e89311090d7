"""The credit checkpoints' batcher: gathered per process, one batch in flight, newest count wins."""

from __future__ import annotations

import asyncio
import json
import time

from proxy.context import GATEWAY
from proxy.errors import StoreUnavailable
from proxy.policies import checkpoints as cp
from proxy.policies.checkpoints import Checkpoints
from proxy.store import Progress
from proxy.store.memory import MemoryStore
from tests.conftest import SECRET, base_config, langflow_tokens

FAR = time.time() + 3600


class Recording(MemoryStore):
    """The in-memory store, each checkpoint call recorded; ``gate`` (if set) holds a call open."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[tuple[str, int]]] = []
        self.gate: asyncio.Event | None = None
        self.fail = 0

    async def checkpoint(self, progress):
        self.calls.append([(p.job_id, p.metered) for p in progress])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("down")
        await super().checkpoint(progress)


async def holds(store, account: str = "acme") -> dict[str, int]:
    return {h.job_id: h.metered for h in await store.expired_holds([account], now=FAR + 10**6)}


async def opened(store: MemoryStore, *jobs: str) -> None:
    await store.seed_account("acme", 1000)
    for job in jobs:
        await store.open_hold(job, "acme", 10, FAR, {})


def progress(job: str, metered: int) -> Progress:
    return Progress(job, "acme", metered, 1, metered, FAR)


async def test_checkpoints_gathered_in_a_window_are_one_store_call_with_the_newest_count():
    store = Recording()
    await opened(store, "a", "b")
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    batcher.add(progress("b", 2))
    batcher.add(progress("a", 3))  # replaces a's waiting one
    assert store.calls == []  # nothing written before the window closes
    await asyncio.sleep(cp.GATHER_S * 3)
    assert store.calls == [[("a", 3), ("b", 2)]]
    assert await holds(store) == {"a": 3, "b": 2}


async def test_a_settling_run_drops_its_waiting_checkpoint():
    store = Recording()
    await opened(store, "a", "b")
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    batcher.add(progress("b", 2))
    batcher.drop("a")
    batcher.drop("never-added")
    await batcher.flush()
    assert store.calls == [[("b", 2)]]


async def test_one_batch_in_flight_so_a_hold_never_goes_back_to_an_older_count():
    store = Recording()
    await opened(store, "a")
    store.gate = asyncio.Event()
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    await asyncio.sleep(cp.GATHER_S * 2)
    assert store.calls == [[("a", 1)]]  # in flight, held open
    batcher.add(progress("a", 2))
    await asyncio.sleep(cp.GATHER_S * 3)
    assert store.calls == [[("a", 1)]]  # the newer count waits for the write in flight
    store.gate.set()
    await asyncio.sleep(cp.GATHER_S * 3)
    assert store.calls == [[("a", 1)], [("a", 2)]]
    assert await holds(store) == {"a": 2}


async def test_a_refused_batch_waits_for_the_next_and_a_newer_count_wins(capfd):
    store = Recording()
    await opened(store, "a", "b")
    store.fail = 1
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    batcher.add(progress("b", 1))
    await batcher.flush()  # refused: the flush ends there, the batch waits again
    assert store.calls == [[("a", 1), ("b", 1)]] and sorted(batcher.due) == ["a", "b"]
    batcher.add(progress("a", 5))
    await batcher.flush()
    assert store.calls[1] == [("a", 5), ("b", 1)]
    assert await holds(store) == {"a": 5, "b": 1}
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "checkpoints_" in line]
    assert [(e["event"], e["level"]) for e in lines] == [("checkpoints_failing", "warning"),
                                                          ("checkpoints_written_again", "info")]
    assert lines[0]["runs"] == 2 and lines[1]["failed_batches"] == 1


async def test_an_outage_is_one_log_line_and_a_retry_every_window_not_a_flood(capfd):
    class Down(MemoryStore):
        calls = 0

        async def checkpoint(self, progress):
            self.calls += 1
            raise StoreUnavailable("down")

    store = Down()
    batcher = Checkpoints(store)
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < 1.0:  # 1,000 runs, each checkpointing once a second
        batcher.add(progress(f"j{i % 1000}", i))
        i += 1
        await asyncio.sleep(0.001)
    lines = [line for line in capfd.readouterr().err.splitlines() if "checkpoint" in line]
    assert len(lines) == 1 and '"checkpoints_failing"' in lines[0]
    assert 5 <= store.calls <= 1.0 / cp.GATHER_S + 1  # one batch in flight, one a window
    assert len(batcher.due) <= 1000  # each run's newest count, waiting: bounded by the open runs
    await asyncio.wait_for(batcher.flush(), 1)  # ends at the refusal: never loops on a store that is down


async def test_a_deferred_settlement_leaves_the_final_count_on_the_hold():
    """The store refuses the settlement three times: a live replica will settle the hold from its
    checkpoint, which must be the run's final count, not the one queued a second before."""
    from types import SimpleNamespace

    from proxy.policies import credits as credits_module
    from proxy.policies.credits import Credits, RunHold

    class SettleDown(MemoryStore):
        async def settle(self, *args, **kwargs):
            raise StoreUnavailable("down")

    store = SettleDown()
    await opened(store, "j")
    policy = Credits(SimpleNamespace(), store)
    meter = SimpleNamespace(output_tokens=10, input_tokens=1)
    run = SimpleNamespace(job_id="j", meter=meter, extra={}, flow_id="wf", backend_job_id=None, key_id="k",
                          env=SimpleNamespace(value="Production"), dialect="workflow", outcome="completed",
                          reason=None, status=200, started_at=time.time(), started_mono=time.monotonic())
    hold = run.extra["credits"] = RunHold("acme", 1000, 100, 100, False, FAR)
    policy._checkpoint(run, hold, 10)
    await policy.checkpoints.flush()
    meter.output_tokens = 40
    policy._checkpoint(run, hold, 25)  # a second later, waiting in the batch
    sleep = credits_module.asyncio.sleep
    credits_module.asyncio.sleep = lambda s: sleep(0)  # (the settle's retry pauses)
    try:
        await policy.on_complete(run)
    finally:
        credits_module.asyncio.sleep = sleep
    await policy.checkpoints.flush()
    assert await holds(store) == {"j": 40}


async def test_a_batch_cancelled_before_it_started_does_not_stop_the_batcher():
    store = Recording()
    await opened(store, "a")
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    batcher._timer.cancel()
    batcher._flush()  # as the timer does
    batcher._writing.cancel()  # (a loop shutting down, say)
    await asyncio.sleep(0)
    batcher.add(progress("a", 2))
    await asyncio.sleep(cp.GATHER_S * 3)
    assert await holds(store) == {"a": 2}


async def test_a_gateway_shutting_down_writes_the_waiting_checkpoints_first(upstream):
    from aiohttp.test_utils import TestServer

    from proxy.app import create_app
    from proxy.config import parse_config

    app = create_app(parse_config(base_config(upstream.url)))
    server = TestServer(app)
    await server.start_server()
    gw = app[GATEWAY]
    await gw.store.open_hold("j", "acme", 10, FAR, {})
    gw.checkpoints.add(progress("j", 7))
    await server.close()  # well within GATHER_S: only the shutdown's flush can have written it
    assert await holds(gw.store) == {"j": 7}


async def test_a_running_stream_is_checkpointed_in_the_store_while_it_runs(upstream, gateway, tmp_path):
    """End to end on SQLite: a run streaming ~2.4 s has its metering on its hold in the store while
    it runs, and its settlement is exact."""
    upstream.handle("/lf", langflow_tokens(count=60, spacing_s=0.04))
    client = await gateway(base_config(upstream.url, store=f"sqlite:///{tmp_path / 'fg.db'}"))
    store = client.app[GATEWAY].store
    landed: list[float] = []
    async with client.post("/api/v1/tenants/t1/workspaces/w1/flows/wf_lf/run-streaming",
                           headers={"x-api-key": SECRET}, json={"input_value": "hi"}) as resp:
        assert resp.status == 200
        job = resp.headers["flow-job-id"]
        started = time.monotonic()

        async def watch() -> None:
            while not landed:
                if (await holds(store)).get(job, 0) > 0:
                    landed.append(time.monotonic() - started)
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        while not resp.content.at_eof():
            await asyncio.wait_for(resp.content.readany(), 5)
        watcher.cancel()
    # the first checkpoint is due 1 s in, then waits GATHER_S: ~1.07 s; the stream lasts ~2.4 s
    assert landed and landed[0] < 2.0, f"no checkpoint reached the store while the run streamed: {landed}"
    await asyncio.sleep(0.2)
    entries = [e for e in await store.ledger("acme") if e["job_id"] == job]
    chars = sum(len(f"w{i} ") for i in range(60))
    assert len(entries) == 1 and entries[0]["output_tokens"] == -(-chars // 4)  # ceil(chars / 4), no usage reported
    assert await holds(store) == {}
    assert (await store.get_account("acme")).held == 0


async def test_one_batcher_per_process_through_both_chains_and_a_reload(upstream, gateway):
    from proxy.config import parse_config
    from proxy.front.reload import apply
    from proxy.policies.credits import Credits

    cfg = base_config(upstream.url)
    client = await gateway(cfg)
    gw = client.app[GATEWAY]

    def batchers() -> set[int]:
        return {id(p.checkpoints) for chain in gw.chains.values() for p in chain.policies if isinstance(p, Credits)}

    assert gw.checkpoints is not None and batchers() == {id(gw.checkpoints)}
    await apply(gw, parse_config({**cfg, "limits": {"credit_quantum_tokens": 77}}))
    assert batchers() == {id(gw.checkpoints)}
