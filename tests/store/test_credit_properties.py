"""Property-based tests of the credit protocol on every store (memory, SQLite, Redis, Redis Cluster,
PostgreSQL).

Two independent clients of one backend (two ``SqliteStore`` objects on one file, each with its own
connections as two processes would have; two ``RedisStore``, ``RedisClusterStore`` or
``PostgresStore`` objects; the one ``MemoryStore``
shared) run random operation lists concurrently (``asyncio.gather``, random ``sleep(0)`` yields
between operations, so they interleave at the await points): open_hold, grow_hold, checkpoint,
settle (by the run's owner), sweep (``expired_holds`` + ``settle(charge=None)``, by either
client, of any job) and grants. Each client owns its jobs (as a replica owns its runs); sweeps may
take any job, racing its owner.

After every operation an atomic snapshot of the backend (one statement / one Lua script / no
await) must show:

- held == the sum of the open holds' amounts (and every hold is > 0);
- balance + spent == initial + grants (a grant in flight may or may not be in it yet);
- ``cut`` (every charge <= the hold's amount): available = balance - held >= 0, balance >= 0;
  ``allow`` (a charge may exceed the hold by up to one quantum):
  balance >= available >= -(runs x quantum).

At the end: each job settled at most once and exactly once if its owner or a sweep settled it (one
ledger entry per settled job, sum of ledger credits == spent), a second settle returns None and
changes nothing, a settled job cannot open a hold again, and nothing is held once every job is
settled.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from proxy.store import Account, Progress
from proxy.store.memory import MemoryStore
from proxy.store.sqlite import SqliteStore
from tests.backends import ALL, postgres_url, redis_cluster_url, redis_url, require_backend
from tests.conftest import all_or_first_failure

ACCT = "acme"
JOBS_PER_CLIENT = 4
RUNS = 2 * JOBS_PER_CLIENT  # every job is one run
EXPIRIES = [10.0, 20.0, 30.0]  # a hold's expires_at (seconds since the epoch: long past)
SWEEP_AT = [15.0, 25.0, 35.0, 1e12]  # the ``now`` of a sweep: some, or all, holds are expired
FAR = 1e12

# --- operations -------------------------------------------------------------------------------

expiry = st.sampled_from(EXPIRIES)
pct = st.integers(0, 100)
yields = st.integers(0, 3)  # sleep(0)s before an operation: where the clients interleave


@st.composite
def job_script(draw, j: int) -> list:
    """One run of a client's job ``j``: open, grow and checkpoint as it streams, then settled by its
    owner or left to the sweepers (its replica died); sometimes a late retry of open, grow or settle.
    A run's hold keeps the expiry it was opened with (as the Credits policy does: run cap + grace).
    Each operation comes with the number of ``sleep(0)`` yields before it."""
    exp = draw(expiry)
    open_ = st.tuples(st.just("open"), st.just(j), st.integers(1, 40), st.integers(1, 20), st.just(exp))
    middle = st.one_of(
        st.tuples(st.just("grow"), st.just(j), st.integers(1, 40), st.just(exp)),
        st.tuples(st.just("checkpoint"), st.just(j), pct, st.just(exp)),
        open_,  # an idempotent retry
    )
    settle = st.tuples(st.just("settle"), st.just(j), pct, st.sampled_from(["completed", "client_disconnected"]))
    script = [draw(open_), *draw(st.lists(middle, max_size=6))]
    if draw(st.booleans()):  # else the replica died mid-run: the sweepers settle it
        script.append(draw(settle))
    script += draw(st.lists(st.one_of(settle, open_, middle), max_size=2))
    return [(draw(yields), op) for op in script]


housekeeping = st.lists(st.tuples(yields, st.one_of(
    st.tuples(st.just("sweep"), st.sampled_from(SWEEP_AT)),
    st.tuples(st.just("grant"), st.integers(1, 30)),
)), max_size=6)
client_scripts = st.tuples(*(job_script(j) for j in range(JOBS_PER_CLIENT)), housekeeping).map(list)
scenario = st.fixed_dictionaries({
    "initial": st.integers(0, 120),
    "quantum": st.integers(1, 25),
    "allow": st.booleans(),
    "seeded": st.booleans(),  # seeded at start, or created lazily by the first operation
    "client0": client_scripts,  # each client: its jobs' runs and a sweeper, all concurrent
    "client1": client_scripts,
})


# --- backends: two clients and an atomic snapshot ---------------------------------------------

@dataclass(frozen=True)
class Snap:
    balance: int
    held: int
    spent: int
    holds: int  # how many open holds
    hold_sum: int  # their amounts
    hold_min: int  # the smallest (0 when none)


class Backend:
    """Two clients of one backend, and a snapshot of the account and its holds in one atomic read."""

    clients: tuple
    initial: int = 0  # what a missing account reads as

    async def snapshot(self) -> Snap:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class MemoryBackend(Backend):
    def __init__(self) -> None:
        store = MemoryStore()
        self.store = store
        self.clients = (store, store)

    async def snapshot(self) -> Snap:
        s = self.store
        balance, held, spent = s.accounts.get(ACCT, [self.initial, 0, 0])
        amounts = [h.amount for h in s.holds.values() if h.account == ACCT]
        return Snap(balance, held, spent, len(amounts), sum(amounts), min(amounts, default=0))

    async def close(self) -> None:
        return None


class SqliteBackend(Backend):
    def __init__(self, path: str) -> None:
        self.path = path
        self.clients = (SqliteStore(path), SqliteStore(path))
        self.reader: sqlite3.Connection | None = None

    async def start(self) -> None:
        for c in self.clients:
            await c.start()
        self.reader = sqlite3.connect(self.path, isolation_level=None)

    async def snapshot(self) -> Snap:
        # one statement: one read snapshot of committed state
        row = self.reader.execute(
            "SELECT (SELECT balance FROM accounts WHERE account = ?1), (SELECT held FROM accounts WHERE account = ?1),"
            " (SELECT spent FROM accounts WHERE account = ?1), count(*), coalesce(sum(amount), 0),"
            " coalesce(min(amount), 0) FROM holds WHERE account = ?1", (ACCT,)).fetchone()
        if row[0] is None:
            return Snap(self.initial, 0, 0, *row[3:])
        return Snap(*row)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        if self.reader is not None:
            self.reader.close()


SNAPSHOT_LUA = """
local a = redis.call('HMGET', KEYS[1], 'balance', 'held', 'spent')
local n, sum, low = 0, 0, 0
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
  local amount = tonumber(redis.call('HGET', key, 'amount'))
  n = n + 1; sum = sum + amount
  if low == 0 or amount < low then low = amount end
end
local indexed = redis.call('ZCARD', KEYS[2])
return {a[1] or false, a[2] or false, a[3] or false, n, sum, low, indexed}
"""


class RedisBackend(Backend):
    def __init__(self) -> None:
        import redis.asyncio as aioredis

        from proxy.store.redis import RedisStore

        self.prefix = f"fgprop{uuid.uuid4().hex[:12]}"
        self.clients = (RedisStore(redis_url(), prefix=self.prefix), RedisStore(redis_url(), prefix=self.prefix))
        self.r = aioredis.Redis.from_url(redis_url())
        self.acct_key = self.clients[0]._acct(ACCT)
        self.index_key = self.clients[0]._index(ACCT)
        self.hold_pattern = self.clients[0]._hold(ACCT, "*")

    async def snapshot(self) -> Snap:
        bal, held, spent, n, total, low, indexed = await self.r.eval(
            SNAPSHOT_LUA, 2, self.acct_key, self.index_key, self.hold_pattern)
        assert indexed == n, f"the hold-expiry index lists {indexed} jobs, {n} holds exist"
        if bal is None:
            assert held is None and spent is None
            return Snap(self.initial, 0, 0, n, total, low)
        return Snap(int(bal), int(held), int(spent), n, total, low)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        keys = [k async for k in self.r.scan_iter(f"{self.prefix}*")]
        if keys:
            await self.r.delete(*keys)
        await self.r.aclose()


class RedisClusterBackend(RedisBackend):
    """Two cluster clients; the snapshot script runs on the master that owns the account's slot."""

    def __init__(self) -> None:
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        from proxy.store.redis_cluster import RedisClusterStore
        from proxy.store.urls import parse_seeds

        self.prefix = f"fgprop{uuid.uuid4().hex[:12]}"
        url = redis_cluster_url()
        self.clients = (RedisClusterStore(url, prefix=self.prefix), RedisClusterStore(url, prefix=self.prefix))
        self.r = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in parse_seeds(url)[0]])
        self.acct_key = self.clients[0]._acct(ACCT)
        self.index_key = self.clients[0]._index(ACCT)
        self.hold_pattern = self.clients[0]._hold(ACCT, "*")

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        async for key in self.r.scan_iter(f"{self.prefix}*", target_nodes=self.r.PRIMARIES):
            await self.r.delete(key)
        await self.r.aclose()


class PostgresBackend(Backend):
    def __init__(self) -> None:
        from proxy.store.postgres import PostgresStore

        self.schema = f"fgprop{uuid.uuid4().hex[:12]}"
        url = f"{postgres_url()}?schema={self.schema}"
        self.clients = (PostgresStore(url), PostgresStore(url))
        self.reader = None

    async def start(self) -> None:
        import asyncpg

        for c in self.clients:
            await c.start()
        # a pool: the clients check the invariants concurrently, and a connection runs one query at a time
        self.reader = await asyncpg.create_pool(postgres_url(), min_size=1, max_size=4,
                                                server_settings={"search_path": self.schema})

    async def snapshot(self) -> Snap:
        # one statement: one read snapshot of committed state
        row = await self.reader.fetchrow(
            "SELECT (SELECT balance FROM accounts WHERE account = $1), (SELECT held FROM accounts WHERE account = $1),"
            " (SELECT spent FROM accounts WHERE account = $1), count(*), coalesce(sum(amount), 0)::bigint,"
            " coalesce(min(amount), 0) FROM holds WHERE account = $1", ACCT)
        if row[0] is None:
            return Snap(self.initial, 0, 0, *row[3:])
        return Snap(*row)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        if self.reader is not None:
            await self.reader.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            await self.reader.close()


async def open_backend(kind: str, tmp_path) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        b = SqliteBackend(str(tmp_path / f"credits-{uuid.uuid4().hex[:10]}.db"))
        await b.start()
        return b
    if kind == "postgres":
        b = PostgresBackend()
        await b.start()
        return b
    return RedisClusterBackend() if kind == "redis-cluster" else RedisBackend()


# --- the model: what each client saw ----------------------------------------------------------

@dataclass
class Model:
    initial: int
    quantum: int
    allow: bool
    grants_started: int = 0
    grants_done: int = 0
    known: dict[str, int] = field(default_factory=dict)  # job -> its hold's amount, as its owner saw it
    metered: dict[str, int] = field(default_factory=dict)  # job -> the owner's last checkpoint
    owner_settled: set[str] = field(default_factory=set)  # jobs whose owner called settle
    gone: set[str] = field(default_factory=set)  # jobs whose owner found the hold taken (swept)
    settled: dict[str, list[dict]] = field(default_factory=dict)  # job -> every non-None settle result
    charges: dict[str, int] = field(default_factory=dict)  # job -> what its owner's settle charged
    trace: list[str] = field(default_factory=list)

    def cap(self, job: str) -> int:
        """The most a job may be charged: its hold, plus one quantum under allow."""
        return self.known.get(job, 0) + (self.quantum if self.allow else 0)

    def record(self, job: str, result: dict | None) -> None:
        if result is not None:
            self.settled.setdefault(job, []).append(result)


async def check(model: Model, backend: Backend, where: str) -> Snap:
    """The invariants on an atomic snapshot of the backend (other clients' operations go on meanwhile:
    a grant that was in flight across the snapshot may or may not be in it)."""
    grants_done = model.grants_done
    snap = await backend.snapshot()
    grants_started = model.grants_started
    msg = f"after {where}: {snap}; trace:\n  " + "\n  ".join(model.trace)
    assert snap.held == snap.hold_sum, "held is not the sum of the open holds " + msg
    assert snap.held >= 0 and snap.spent >= 0, msg
    assert snap.holds == 0 or snap.hold_min >= 1, "an open hold of nothing " + msg
    total = snap.balance + snap.spent
    assert model.initial + grants_done <= total <= model.initial + grants_started, (
        f"balance + spent != initial + grants ({model.initial} + {grants_done}..{grants_started}) " + msg)
    available = snap.balance - snap.held
    if model.allow:
        assert available >= -RUNS * model.quantum, "allow overran more than a quantum per run " + msg
        assert snap.balance >= -RUNS * model.quantum, msg
    else:
        assert available >= 0, "cut: available went below 0 " + msg
        assert snap.balance >= 0, "cut: balance went below 0 " + msg
    return snap


async def client(backend: Backend, model: Model, me: int, steps: list) -> None:
    """One task of client ``me``: a run of one of its jobs, or its sweeper."""
    store = backend.clients[me]
    initial = model.initial

    def job(j: int) -> str:
        return f"c{me}-j{j}"

    for yields, op in steps:
        for _ in range(yields):
            await asyncio.sleep(0)
        kind = op[0]
        if kind == "open":
            _, j, want, minimum, exp = op
            jid = job(j)
            before = model.known.get(jid)
            g = await store.open_hold(jid, ACCT, want, exp, {"flow": "f"}, minimum=minimum, initial=initial)
            model.trace.append(f"c{me} open {jid} want={want} min={minimum} exp={exp} -> {g}")
            if jid in model.owner_settled:
                assert g == 0, f"a settled job {jid} opened a hold again: {g}\n" + "\n".join(model.trace)
            elif before is None:
                assert g == 0 or min(want, minimum) <= g <= want, f"open granted {g}\n" + "\n".join(model.trace)
                if g:
                    model.known[jid] = g
            else:  # an idempotent retry: the same hold, unless a sweep took it
                assert g in (0, before), f"a second open of {jid} answered {g}, not {before}"
                if g == 0:
                    model.gone.add(jid)
        elif kind == "grow":
            _, j, want, exp = op
            jid = job(j)
            g = await store.grow_hold(jid, ACCT, want, exp)
            model.trace.append(f"c{me} grow {jid} want={want} exp={exp} -> {g}")
            assert 0 <= g <= want
            if jid not in model.known or jid in model.owner_settled:
                assert g == 0, f"grew a hold {jid} that is not open: {g}\n" + "\n".join(model.trace)
            elif g:
                model.known[jid] += g
        elif kind == "checkpoint":
            _, j, p, exp = op
            jid = job(j)
            metered = max(model.metered.get(jid, 0), p * model.cap(jid) // 100)  # metering only goes up
            if jid in model.known and jid not in model.owner_settled:
                model.metered[jid] = metered
            model.trace.append(f"c{me} checkpoint {jid} metered={metered} exp={exp}")
            await store.checkpoint([Progress(jid, ACCT, metered, 3, metered, exp)])
        elif kind == "settle":
            _, j, p, outcome = op
            jid = job(j)
            charge = p * model.cap(jid) // 100
            again = jid in model.owner_settled
            model.owner_settled.add(jid)
            r = await store.settle(jid, ACCT, charge, {"outcome": outcome, "flow": "f", "output_tokens": charge},
                                   initial=initial)
            model.trace.append(f"c{me} settle {jid} charge={charge} -> {None if r is None else r['credits']}")
            model.record(jid, r)
            if again:
                assert r is None, f"{jid} settled twice\n" + "\n".join(model.trace)
            elif r is None:
                model.gone.add(jid)  # a sweep settled it first
            else:
                model.charges[jid] = charge
                assert r["credits"] == charge and r["job_id"] == jid and r["owner"] == ACCT
                assert r["outcome"] == outcome
        elif kind == "sweep":
            _, now = op
            holds = await store.expired_holds([ACCT], now=now)
            model.trace.append(f"c{me} sweep now={now} -> {[(h.job_id, h.amount, h.metered) for h in holds]}")
            for h in holds:
                assert h.account == ACCT and h.expires_at < now and h.amount >= 1
                assert h.metered <= h.amount + (model.quantum if model.allow else 0)
                await asyncio.sleep(0)
                r = await store.settle(h.job_id, ACCT, None, {"outcome": "replica_lost"}, initial=initial)
                model.trace.append(f"c{me}   sweep settle {h.job_id} -> {None if r is None else r['credits']}")
                model.record(h.job_id, r)
                if r is not None:
                    assert r["job_id"] == h.job_id and r["outcome"] == "replica_lost"
                    # the last checkpoint: it only goes up, and never past the hold's ceiling (the hold
                    # may have grown since it was listed)
                    assert h.metered <= r["credits"] <= model.cap(h.job_id), "\n".join(model.trace)
        else:
            _, amount = op
            model.grants_started += amount
            await store.grant(ACCT, amount, initial=initial)
            model.grants_done += amount
            model.trace.append(f"c{me} grant {amount}")
        await check(model, backend, model.trace[-1])


async def scenario_run(kind: str, tmp_path, sc: dict) -> None:
    backend = await open_backend(kind, tmp_path)
    backend.initial = sc["initial"]
    model = Model(sc["initial"], sc["quantum"], sc["allow"])
    s0, s1 = backend.clients
    try:
        if sc["seeded"]:
            await s0.seed_account(ACCT, sc["initial"])
            await s1.seed_account(ACCT, sc["initial"] + 1000)  # set-if-absent: changes nothing
        await check(model, backend, "seeding")
        await all_or_first_failure([client(backend, model, me, script)
                                    for me in (0, 1) for script in sc[f"client{me}"]])
        trace = "\n  ".join(model.trace)
        # what the example exercised (pytest --hypothesis-show-statistics)
        event(f"jobs settled: {min(len(model.settled), 4)}{'+' if len(model.settled) >= 4 else ''}")
        if any(r[0]["outcome"] == "replica_lost" for r in model.settled.values()):
            event("a sweep settled a job")
        if model.gone:
            event("an owner found its hold swept")
        if any(charge > model.known.get(jid, 0) for jid, charge in model.charges.items()):
            event("allow: a run was charged past its hold")
        if any("-> 0" in t for t in model.trace if " open " in t):
            event("an open was refused")
        snap = await check(model, backend, "all operations")

        # every job settled at most once, and its owner's charge is the one recorded
        for jid, results in model.settled.items():
            assert len(results) == 1, f"{jid} settled {len(results)} times:\n  {trace}"
        for jid in model.gone:
            assert jid in model.settled, f"{jid}'s hold vanished without a settlement:\n  {trace}"
        # the holds still open are exactly what their owners hold, at their last checkpoint
        left = await s1.expired_holds([ACCT], now=FAR)
        assert len(left) == snap.holds
        for h in left:
            assert h.job_id not in model.settled and h.job_id not in model.owner_settled
            assert h.amount == model.known[h.job_id], f"{h}:\n  {trace}"
            assert h.metered == model.metered.get(h.job_id, 0), f"{h}:\n  {trace}"
            # every job's settlement: a sweep of the rest from the other client
            r = await s0.settle(h.job_id, ACCT, None, {"outcome": "replica_lost"}, initial=sc["initial"])
            assert r is not None and r["credits"] == h.metered
            model.record(h.job_id, r)
        snap = await check(model, backend, "the final sweep")
        assert (snap.held, snap.holds) == (0, 0), f"held after every job was settled: {snap}\n  {trace}"
        assert await s0.get_account(ACCT, initial=sc["initial"]) == Account(snap.balance, 0, snap.spent)
        assert snap.balance + snap.spent == sc["initial"] + model.grants_done

        # the ledger: exactly one entry per settled job, and it is the job's record
        for s in (s0, s1):
            ledger = await s.ledger(ACCT)
            jobs = [e["job_id"] for e in ledger]
            assert sorted(jobs) == sorted(model.settled), f"ledger {jobs}:\n  {trace}"
            assert sum(e["credits"] for e in ledger) == snap.spent
            for e in ledger:
                assert e == model.settled[e["job_id"]][0]
                assert await s.ledger_entry(ACCT, e["job_id"]) == e
                if e["job_id"] in model.charges:
                    assert e["credits"] == model.charges[e["job_id"]]

        # a second settle of a settled job returns None and changes nothing; nor can it hold again
        for jid in sorted(model.settled):
            for s in (s0, s1):
                assert await s.settle(jid, ACCT, 7, {"outcome": "completed"}, initial=sc["initial"]) is None
                assert await s.settle(jid, ACCT, None, {"outcome": "replica_lost"}, initial=sc["initial"]) is None
                assert await s.open_hold(jid, ACCT, 5, FAR, {}, minimum=1, initial=sc["initial"]) == 0
                assert await s.grow_hold(jid, ACCT, 5, FAR) == 0
                await s.checkpoint([Progress(jid, ACCT, 99, 1, 99, FAR)])
        assert await backend.snapshot() == snap, "a settled job's second settle/open changed the account"
        assert len(await s0.ledger(ACCT)) == len(model.settled)
    finally:
        await backend.close()


@pytest.mark.parametrize("kind", ALL)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])  # (explain: slow, no help here)
@given(sc=scenario)
def test_two_clients_keep_the_credit_invariants(kind, tmp_path, sc):
    require_backend(kind)
    asyncio.run(scenario_run(kind, tmp_path, sc))
