"""Property-based tests of the money path: the Credits policy of two gateway processes on one store.

Two "processes" are two :class:`Credits` policies, each with its own store client (two
``SqliteStore`` objects on one file, two ``RedisStore`` objects; the one ``MemoryStore`` shared),
its own :class:`HoldSizer` and :class:`Balances`. Each runs random runs concurrently, and the two
run at once: admission (``on_request``: the first hold), a random number of Token and Usage events
of random sizes through ``on_event`` (awaiting what it returns; a StopRun is a cut), then
``on_complete`` (settlement), or no ``on_complete`` at all (the replica died: at the end both
processes sweep its expired hold at once). Small balances and quanta, so that cuts and refusals happen.

Invariants, during the runs and at the end:

- balance + spent == initial credits; nothing held at the end, nothing left to sweep;
- ``cut``: balance >= 0 and balance - held >= 0, always; ``allow``: neither below
  -(concurrent runs x quantum credits), counting the most runs that were ever admitted and not yet
  settled at once;
- one ledger entry per admitted run (keyed by the run's own job id, whatever backend job id it
  had), none for a refused one; the ledger's credits sum to ``spent``;
- each run's credits <= what it metered (a dead replica's run: the most it ever metered), and <= its
  hold (plus one quantum under ``allow``); a run that was not cut and did not die is charged exactly
  what it metered; a cut run is charged its ceiling;
- at the end, with nothing else going on, a run is refused (402) only when the free balance cannot
  pay the smallest first hold (the floor).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from proxy.balances import Balances
from proxy.config import parse_config
from proxy.env import Env
from proxy.errors import NoCredits
from proxy.policies import StopRun
from proxy.policies.credits import Credits, credits_for, sweep_expired_holds
from proxy.policies.hold_size import HoldSizer
from proxy.protocols import Token, Usage
from proxy.run import CREDITS_CUT, Meter, Run, new_job_id
from proxy.store import open_store
from proxy.store.memory import MemoryStore
from proxy.store.sqlite import SqliteStore
from tests.backends import ALL, require_backend
from tests.backends import store_url as backend_url
from tests.conftest import all_or_first_failure, base_config

ACCT = "acme"
FAR = 1e12  # a sweep's "now" after every hold expired

# --- what to run ------------------------------------------------------------------------------

ev = st.one_of(
    st.tuples(st.just("text"), st.integers(1, 120)),  # a Token of that many characters
    st.tuples(st.just("usage"), st.integers(1, 40)),  # the backend reports that many more output tokens
)
run_spec = st.fixed_dictionaries({
    "start": st.integers(0, 3),  # sleep(0)s before admission
    "events": st.lists(st.tuples(st.integers(0, 2), ev), max_size=12),  # (yields before, event)
    "ending": st.sampled_from(["completed", "completed", "client_disconnected", "dies"]),
    "backend_job_id": st.sampled_from([None, "backend-job"]),  # a backend that repeats its own id
})
scenario = st.fixed_dictionaries({
    "initial": st.integers(0, 300),
    "quantum_tokens": st.integers(10, 50),
    "floor_tokens": st.integers(1, 20),
    "per_1k": st.sampled_from([1000, 500, 1500, 3000]),
    "mode": st.sampled_from(["cut", "allow"]),
    "seeded": st.booleans(),  # seeded at start, or created lazily by the first admission
    "gw0": st.lists(run_spec, min_size=1, max_size=8),
    "gw1": st.lists(run_spec, min_size=1, max_size=8),
})


# --- two gateway processes --------------------------------------------------------------------

def config_for(sc: dict):
    cfg = base_config("http://127.0.0.1:9")
    cfg["accounts"][ACCT]["initial_credits"] = sc["initial"]
    cfg["limits"] = {"credit_quantum_tokens": sc["quantum_tokens"], "credit_hold_floor_tokens": sc["floor_tokens"]}
    flow = next(f for f in cfg["flows"] if f["id"] == "wf_text")
    flow["credits_per_1k_tokens"] = sc["per_1k"]
    flow["on_credits_exhausted"] = sc["mode"]
    return parse_config(cfg)


async def open_clients(kind: str, tmp_path):
    """Two store clients of one backend (as two processes have), and what closes them."""
    if kind == "memory":
        store = MemoryStore()
        return (store, store), contextlib.nullcontext()
    if kind == "sqlite":
        path = str(tmp_path / f"policy-{uuid.uuid4().hex[:10]}.db")
        clients = (SqliteStore(path), SqliteStore(path))
        for c in clients:
            await c.start()
        return clients, contextlib.nullcontext()
    namespace = backend_url(kind, tmp_path)
    url = namespace.__enter__()
    clients = (open_store(url, instrument=False), open_store(url, instrument=False))
    for c in clients:
        await c.start()
    return clients, namespace


async def close_clients(clients, namespace) -> None:
    for c in {id(c): c for c in clients}.values():
        await c.close()
    namespace.__exit__(None, None, None)  # its keys or schema removed


def gateway(config, store):
    gw = SimpleNamespace(config=config, store=store, hold_sizer=HoldSizer(store, config.limits),
                         balances=Balances(store, {n: a.initial_credits for n, a in config.accounts.items()}))
    return gw, Credits(gw.config, gw.store, gw.hold_sizer, gw.balances)


@dataclass
class Outcome:
    run: SimpleNamespace
    gw: int
    admitted: bool = False
    cut: bool = False
    died: bool = False
    first_hold: int = 0
    peak_tokens: int = 0  # the most the meter ever showed (a usage report may come in below chars / 4)


@dataclass
class Totals:
    initial: int
    quantum: int  # credits
    allow: bool
    admitted: int = 0
    live: int = 0  # admitted runs not yet settled (a dead replica's until it is swept)
    most_live: int = 0  # the most there ever were at once

    def floor(self) -> int:
        """The lowest the balance may go: -(concurrent runs x quantum) under allow, else 0."""
        return -self.most_live * self.quantum if self.allow else 0


async def check_account(store, totals: Totals, where: str) -> None:
    acct = await store.get_account(ACCT, initial=totals.initial)
    assert acct.balance + acct.spent == totals.initial, f"{where}: {acct}"
    assert acct.held >= 0, f"{where}: {acct}"
    assert acct.balance >= totals.floor(), f"{where}: the balance went below {totals.floor()}: {acct}"
    assert acct.balance - acct.held >= totals.floor(), f"{where}: available went below {totals.floor()}: {acct}"


async def one_run(me: int, credits: Credits, flow, spec: dict, totals: Totals, out: list[Outcome]) -> None:
    run = SimpleNamespace(
        flow=flow, owner=ACCT, job_id=new_job_id(), key_id="key_acme", env=Env.Production, dialect="profitbase",
        started_at=time.time(), started_mono=time.monotonic(), meter=Meter(), extra={}, outcome=None,
        reason=None, status=200, flow_id=flow.id, backend_job_id=spec["backend_job_id"])
    rec = Outcome(run, me)
    out.append(rec)
    for _ in range(spec["start"]):
        await asyncio.sleep(0)
    try:
        await credits.on_request(run)
    except NoCredits:
        return
    rec.admitted = True
    totals.admitted += 1
    totals.live += 1
    totals.most_live = max(totals.most_live, totals.live)
    rec.first_hold = run.extra["credits"].held
    for yields, (kind, n) in spec["events"]:
        for _ in range(yields):
            await asyncio.sleep(0)
        if kind == "text":
            run.meter.observe(Token("x" * n))
        else:
            run.meter.observe(Usage(output=(run.meter.reported_output or 0) + n))
        rec.peak_tokens = max(rec.peak_tokens, run.meter.output_tokens)
        try:
            pending = credits.on_event(run, None)
            if pending is not None:
                await pending
        except StopRun as stop:
            assert stop.outcome == CREDITS_CUT
            run.outcome, rec.cut = stop.outcome, True
            break
        finally:
            await check_account(credits.store, totals, f"gw{me} run {run.job_id} after an event")
    if spec["ending"] == "dies":
        rec.died = True  # no on_complete: the hold stays in the store with its last checkpoint
        return
    if not rec.cut:
        run.outcome = spec["ending"]
    await credits.on_complete(run)
    totals.live -= 1
    await check_account(credits.store, totals, f"gw{me} run {run.job_id} settled")


async def scenario_run(kind: str, tmp_path, sc: dict) -> None:
    config = config_for(sc)
    flow = config.flow("wf_text")
    quantum = max(1, credits_for(sc["quantum_tokens"], sc["per_1k"]))
    totals = Totals(sc["initial"], quantum, sc["mode"] == "allow")
    clients, namespace = await open_clients(kind, tmp_path)
    try:
        if sc["seeded"]:
            for c in clients:  # both processes start: set-if-absent
                await c.seed_account(ACCT, sc["initial"])
        procs = [gateway(config, c) for c in clients]
        out: list[Outcome] = []
        await all_or_first_failure([one_run(me, procs[me][1], flow, spec, totals, out)
                                    for me in (0, 1) for spec in sc[f"gw{me}"]])
        for _, credits in procs:  # checkpoints still waiting in each process's batch (or on their way)
            await credits.checkpoints.flush()

        # the replicas that died: both live processes sweep at once, each hold settled once
        died = [r for r in out if r.died]
        swept = await asyncio.gather(*(sweep_expired_holds(gw, now=FAR) for gw, _ in procs))
        assert sum(swept) == len(died), f"swept {swept}, {len(died)} runs died"
        assert await clients[0].expired_holds([ACCT], now=FAR) == []

        store = clients[1]
        acct = await store.get_account(ACCT, initial=sc["initial"])
        admitted = [r for r in out if r.admitted]
        assert len(admitted) == totals.admitted
        assert acct.held == 0, f"held after every run ended: {acct}"
        assert acct.balance + acct.spent == sc["initial"], acct
        assert acct.balance >= totals.floor(), f"{sc['mode']}: {acct} below {totals.floor()}"

        ledger = await store.ledger(ACCT)
        by_job = {e["job_id"]: e for e in ledger}
        assert len(by_job) == len(ledger) == len(admitted), (
            f"{len(ledger)} ledger entries for {len(admitted)} runs ({len(by_job)} job ids)")
        assert set(by_job) == {r.run.job_id for r in admitted}
        assert sum(e["credits"] for e in ledger) == acct.spent
        for rec in admitted:
            run = rec.run
            e = by_job[run.job_id]
            hold = run.extra["credits"]
            metered = credits_for(run.meter.output_tokens, sc["per_1k"])
            ceiling = hold.held + (quantum if totals.allow else 0)
            what = f"{'died' if rec.died else run.outcome} run {e}, hold {hold}, meter {run.meter}"
            # a live run is charged from its final meter; a dead one from its last checkpoint, which
            # may predate a usage report that came in below the chars / 4 estimate
            peak = credits_for(rec.peak_tokens, sc["per_1k"])
            assert e["credits"] <= (peak if rec.died else metered), "charged more than it metered: " + what
            assert e["credits"] <= ceiling, "charged past its hold's ceiling: " + what
            assert e["owner"] == ACCT and e["flow"] == flow.id
            if rec.died:
                assert e["outcome"] == "replica_lost", what
            else:
                assert e["outcome"] == run.outcome and e["backend_job_id"] == run.backend_job_id, what
                assert e["output_tokens"] == run.meter.output_tokens, what
                assert run.extra["credits_charged"] == e["credits"], what
                if rec.cut:
                    assert e["credits"] == ceiling < metered, "a cut run is charged its ceiling: " + what
                else:
                    assert e["credits"] == metered, "a run that was not cut is charged in full: " + what
        for rec in out:
            if not rec.admitted:
                assert await store.ledger_entry(ACCT, rec.run.job_id) is None

        # quiet now: a run is refused (402) only when the free balance cannot pay the smallest first hold
        floor = max(1, credits_for(min(sc["floor_tokens"], sc["quantum_tokens"]), sc["per_1k"]))
        for me, (gw, credits) in enumerate(procs):
            probe: list[Outcome] = []
            before = await gw.store.get_account(ACCT, initial=sc["initial"])
            quiet = Totals(sc["initial"], quantum, totals.allow, most_live=max(totals.most_live, 1))
            await one_run(me, credits, flow, {"start": 0, "events": [], "ending": "completed", "backend_job_id": None},
                          quiet, probe)
            assert probe[0].admitted == (before.balance - before.held >= floor), (
                f"gw{me}: a run {'admitted' if probe[0].admitted else 'refused'} with {before} free "
                f"and a floor of {floor}")
            if probe[0].admitted:
                assert (await store.ledger_entry(ACCT, probe[0].run.job_id))["credits"] == 0
            assert await gw.store.get_account(ACCT, initial=sc["initial"]) == before

        event(f"mode={sc['mode']}")
        if any(r.cut for r in admitted):
            event("a run was cut")
        if len(admitted) < len(out):
            event("a run was refused (402)")
        if died:
            event("a replica died; its hold was swept")
        if any(r.run.extra["credits"].held > r.first_hold for r in admitted):
            event("a hold grew")
        if any(r.first_hold < quantum for r in admitted):
            event("a first hold below one quantum")
        if acct.balance < 0:
            event("allow: the balance went negative")
    finally:
        await close_clients(clients, namespace)


@pytest.mark.parametrize("kind", ALL)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(sc=scenario)
def test_two_gateways_never_overspend(kind, tmp_path, sc):
    require_backend(kind)
    asyncio.run(scenario_run(kind, tmp_path, sc))


def test_a_runs_job_id_is_read_only():
    """The job id keys the hold, the checkpoints, the settlement and the ledger: nothing renames a
    run (a backend's own id is recorded as ``backend_job_id``)."""
    run = Run(request=None, dialect="profitbase", route="stream", flow_ref="wf_text",  # type: ignore[arg-type]
              env=Env.Production, stream=True, body=b"")
    first = run.job_id
    with pytest.raises(AttributeError):
        run.job_id = "backend-job"  # type: ignore[misc]
    run.backend_job_id = "backend-job"
    assert run.job_id == first
    assert Run(request=None, dialect="profitbase", route="stream", flow_ref="wf_text",  # type: ignore[arg-type]
               env=Env.Production, stream=True, body=b"").job_id != first
