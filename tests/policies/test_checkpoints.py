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


async def test_an_unreachable_store_costs_one_log_line_per_batch_and_the_next_batch_goes_on(capfd):
    store = Recording()
    await opened(store, "a", "b")
    store.fail = 1
    batcher = Checkpoints(store)
    batcher.add(progress("a", 1))
    batcher.add(progress("b", 1))
    await batcher.flush()
    failed = [json.loads(line) for line in capfd.readouterr().err.splitlines() if "checkpoint_failed" in line]
    assert [(e["event"], e["runs"], e["level"]) for e in failed] == [("checkpoint_failed", 2, "warning")]
    batcher.add(progress("a", 5))
    await batcher.flush()
    assert await holds(store) == {"a": 5, "b": 0}


async def test_a_running_stream_is_checkpointed_in_the_store_every_second(upstream, gateway, tmp_path):
    """End to end on SQLite: a run streaming ~2.4 s has its metering on its hold in the store while
    it runs (the batcher's window is no gap a dead replica's settlement could fall into), and its
    settlement is exact."""
    upstream.handle("/lf", langflow_tokens(count=60, spacing_s=0.04))
    client = await gateway(base_config(upstream.url, store=f"sqlite:///{tmp_path / 'fg.db'}"))
    store = client.app[GATEWAY].store
    seen: list[int] = []
    async with client.post("/api/v1/tenants/t1/workspaces/w1/flows/wf_lf/run-streaming",
                           headers={"x-api-key": SECRET}, json={"input_value": "hi"}) as resp:
        assert resp.status == 200
        job = resp.headers["flow-job-id"]
        started = time.monotonic()
        while not resp.content.at_eof():
            await asyncio.wait_for(resp.content.readany(), 5)
            if time.monotonic() - started > 1.3 and not seen:
                seen.append((await holds(store)).get(job, 0))
    assert seen and seen[0] > 0, "no checkpoint reached the store within 1.3 s of streaming"
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
