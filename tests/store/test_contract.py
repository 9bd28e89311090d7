"""The store contract: every implementation behaves the same (memory, SQLite, Redis, Redis Cluster,
PostgreSQL)."""

from __future__ import annotations

import asyncio
import gc
import time

import pytest

from proxy.store import Account, Progress

NOW = time.time()


@pytest.fixture(autouse=True)
def _now() -> None:
    """NOW is each test's own start: the module is imported when the suite is collected, minutes
    before its tests run, and a token or window dated then would have expired (in Redis, for real)."""
    global NOW
    NOW = time.time()


async def test_token_single_use(store):
    await store.put_token("h1", {"owner": "acme", "key_id": "k", "flow_id": None}, NOW + 60)
    assert await store.consume_token("h1") == ("ok", {"owner": "acme", "key_id": "k", "flow_id": None})
    assert await store.consume_token("h1") == ("used", None)
    assert await store.consume_token("nope") == ("unknown", None)


async def test_token_expiry(store):
    await store.put_token("h2", {"owner": "acme", "key_id": "k", "flow_id": "wf"}, NOW + 10)
    assert (await store.consume_token("h2", now=NOW + 11))[0] in ("expired", "unknown")
    assert (await store.consume_token("h2", now=NOW + 5))[0] == "ok"


async def test_concurrent_consumes_spend_once(store):
    await store.put_token("h3", {"owner": "acme", "key_id": "k", "flow_id": None}, NOW + 60)
    results = await asyncio.gather(*(store.consume_token("h3") for _ in range(200)))
    assert [r[0] for r in results].count("ok") == 1
    assert {r[0] for r in results} == {"ok", "used"}


async def test_rate_window(store):
    first = await store.rate_hit("b", 2, 60, now=NOW)
    assert (first.allowed, first.remaining) == (True, 1)
    second = await store.rate_hit("b", 2, 60, now=NOW + 1)
    assert (second.allowed, second.remaining) == (True, 0)
    third = await store.rate_hit("b", 2, 60, now=NOW + 10)
    assert not third.allowed and abs(third.retry_after_s - 50) < 0.01
    later = await store.rate_hit("b", 2, 60, now=NOW + 61)
    assert later.allowed and later.remaining == 1


async def test_slots(store):
    assert (await store.slot_acquire("s", 2, "j1", NOW + 100, now=NOW)).allowed
    assert (await store.slot_acquire("s", 2, "j2", NOW + 50, now=NOW)).allowed
    refused = await store.slot_acquire("s", 2, "j3", NOW + 100, now=NOW)
    assert not refused.allowed and abs(refused.retry_after_s - 50) < 0.01
    await store.slot_release("s", "j1")
    assert (await store.slot_acquire("s", 2, "j3", NOW + 100, now=NOW)).allowed
    # j2's slot expires by itself (a replica that died does not hold it forever)
    assert (await store.slot_acquire("s", 2, "j4", NOW + 200, now=NOW + 60)).allowed


async def test_seed_once_and_grant(store):
    await store.seed_account("acme", 100)
    await store.seed_account("acme", 999)
    assert await store.get_account("acme") == Account(100, 0, 0)
    assert await store.grant("acme", 50) == 150
    assert await store.get_account("nobody") == Account(0, 0, 0)


async def test_holds_never_exceed_available(store):
    await store.seed_account("acme", 250)
    assert await store.open_hold("j1", "acme", 100, NOW + 60, {"flow": "wf"}) == 100
    assert await store.open_hold("j1", "acme", 100, NOW + 60, {"flow": "wf"}) == 100  # idempotent
    assert await store.open_hold("j2", "acme", 100, NOW + 60, {}) == 100
    assert await store.open_hold("j3", "acme", 100, NOW + 60, {}) == 50
    assert await store.open_hold("j4", "acme", 100, NOW + 60, {}) == 0
    assert (await store.get_account("acme")).held == 250
    assert await store.grow_hold("j1", "acme", 100, NOW + 60) == 0
    assert await store.grow_hold("gone", "acme", 100, NOW + 60) == 0


async def test_concurrent_holds_over_a_small_balance(store):
    await store.seed_account("acme", 1000)
    granted = await asyncio.gather(*(store.open_hold(f"c{i}", "acme", 100, NOW + 60, {}) for i in range(50)))
    assert sum(granted) == 1000
    assert (await store.get_account("acme")).held == 1000


async def test_grow_checkpoint_and_settle_once(store):
    await store.seed_account("acme", 1000)
    await store.open_hold("j", "acme", 100, NOW + 60, {"flow": "wf", "key_id": "k"})
    assert await store.grow_hold("j", "acme", 100, NOW + 90) == 100
    await store.checkpoint([Progress("j", "acme", 150, 5, 150, NOW + 90)])
    entry = await store.settle("j", "acme", 160, {"outcome": "completed", "output_tokens": 160, "ended_at": NOW})
    assert entry["job_id"] == "j" and entry["owner"] == "acme" and entry["credits"] == 160
    assert entry["flow"] == "wf" and entry["key_id"] == "k" and entry["input_tokens"] == 5
    assert entry["output_tokens"] == 160 and entry["outcome"] == "completed"
    assert await store.get_account("acme") == Account(840, 0, 160)
    assert await store.settle("j", "acme", 999, {"outcome": "again"}) is None
    assert await store.get_account("acme") == Account(840, 0, 160)
    assert await store.open_hold("j", "acme", 100, NOW + 60, {}) == 0  # a settled job cannot hold again
    assert [e["job_id"] for e in await store.ledger("acme")] == ["j"]


async def test_settle_from_checkpoint_and_expired_holds(store):
    await store.seed_account("acme", 1000)
    await store.open_hold("dead", "acme", 100, NOW - 5, {"flow": "wf"})
    await store.open_hold("alive", "acme", 100, NOW + 500, {"flow": "wf"})
    await store.checkpoint([Progress("dead", "acme", 42, 1, 42, NOW - 5)])
    expired = await store.expired_holds(["acme"], now=NOW)
    assert [h.job_id for h in expired] == ["dead"]
    assert expired[0].metered == 42 and expired[0].meta == {"flow": "wf"}
    entry = await store.settle("dead", "acme", None, {"outcome": "replica_lost", "ended_at": NOW})
    assert entry["credits"] == 42 and entry["output_tokens"] == 42
    assert await store.expired_holds(["acme"], now=NOW) == []
    acct = await store.get_account("acme")
    assert acct == Account(958, 100, 42)


async def test_a_batch_of_checkpoints_reaches_every_hold_and_skips_the_settled(store):
    """One call checkpoints the holds of several accounts; a settled job's (it settled while its
    checkpoint waited) and an unknown job's are no-ops: no hold comes back, nothing is charged."""
    await store.seed_account("acme", 1000)
    await store.seed_account("beta", 1000)
    await store.open_hold("a1", "acme", 100, NOW + 60, {"flow": "wf"})
    await store.open_hold("a2", "acme", 100, NOW + 60, {"flow": "wf"})
    await store.open_hold("b1", "beta", 100, NOW + 60, {"flow": "wf"})
    await store.open_hold("gone", "acme", 100, NOW + 60, {"flow": "wf"})
    await store.settle("gone", "acme", 10, {"outcome": "completed", "ended_at": NOW})
    await store.checkpoint([])
    await store.checkpoint([Progress("a1", "acme", 11, 1, 11, NOW - 5), Progress("gone", "acme", 99, 1, 99, NOW - 5),
                            Progress("b1", "beta", 33, 3, 33, NOW - 5), Progress("never", "acme", 7, 0, 7, NOW - 5),
                            Progress("a2", "acme", 22, 2, 22, NOW - 5)])
    expired = {h.job_id: h for h in await store.expired_holds(["acme", "beta"], now=NOW)}
    assert sorted(expired) == ["a1", "a2", "b1"]
    assert [(expired[j].metered, expired[j].input_tokens, expired[j].output_tokens) for j in ("a1", "a2", "b1")] == [
        (11, 1, 11), (22, 2, 22), (33, 3, 33)]
    assert await store.get_account("acme") == Account(990, 200, 10)
    assert await store.get_account("beta") == Account(1000, 100, 0)
    assert [e["job_id"] for e in await store.ledger("acme")] == ["gone"]


async def test_a_job_given_twice_in_one_checkpoint_batch_keeps_its_last_count(store):
    await store.seed_account("acme", 1000)
    await store.open_hold("a", "acme", 10, NOW + 60, {})
    await store.open_hold("b", "acme", 10, NOW + 60, {})
    await store.checkpoint([Progress("a", "acme", 3, 1, 3, NOW - 5), Progress("a", "acme", 5, 1, 5, NOW - 5)])
    await store.checkpoint([Progress("b", "acme", 5, 1, 5, NOW - 5), Progress("b", "acme", 3, 1, 3, NOW - 5)])
    assert {h.job_id: h.metered for h in await store.expired_holds(["acme"], now=NOW)} == {"a": 5, "b": 3}


async def test_expired_holds_of_other_accounts_never_hide_this_replicas(store):
    """The sweeper asks for its own accounts: more than ``limit`` expired holds of another account
    (one a reload removed, or another deployment's) must not stand in front of them."""
    await store.seed_account("acme", 1000)
    await store.seed_account("gone", 10_000)
    for i in range(12):
        await store.open_hold(f"gone-{i}", "gone", 1, NOW - 100 + i, {})
    await store.open_hold("ours", "acme", 1, NOW - 1, {})
    assert [h.job_id for h in await store.expired_holds(["acme"], now=NOW, limit=10)] == ["ours"]


async def test_settle_without_hold_and_allow_overrun(store):
    await store.seed_account("acme", 10)
    await store.open_hold("o", "acme", 100, NOW + 60, {})
    await store.settle("o", "acme", 30, {"ended_at": NOW})
    assert await store.get_account("acme") == Account(-20, 0, 30)
    assert (await store.settle("free", "acme", None, {"ended_at": NOW}))["credits"] == 0


async def test_ledger_order_and_since(store):
    await store.seed_account("acme", 1000)
    for i, ended in enumerate([NOW + 3, NOW + 1, NOW + 2]):
        await store.settle(f"l{i}", "acme", 1, {"ended_at": ended})
    entries = await store.ledger("acme")
    assert [e["job_id"] for e in entries] == ["l1", "l2", "l0"]
    assert [e["job_id"] for e in await store.ledger("acme", since=NOW + 2)] == ["l2", "l0"]
    assert len(await store.ledger("acme", limit=2)) == 2
    assert await store.ledger("other") == []


async def test_ledger_entry_by_job_is_the_job_record(store):
    await store.seed_account("acme", 100)
    await store.open_hold("job1", "acme", 10, NOW + 60, {"flow": "wf"})
    await store.settle("job1", "acme", 3, {"outcome": "completed", "ended_at": NOW})
    entry = await store.ledger_entry("acme", "job1")
    assert entry["credits"] == 3 and entry["outcome"] == "completed" and entry["flow"] == "wf"
    assert await store.ledger_entry("other", "job1") is None
    assert await store.ledger_entry("acme", "nope") is None


async def test_a_lost_account_is_re_created_from_its_initial_credits(store):
    """Nothing seeded (a store that lost its data, an emptied database): what creates an account
    creates it with its initial credits, as a gateway restart would have seeded it."""
    assert await store.get_account("acme", initial=500) == Account(500, 0, 0)
    assert await store.open_hold("j", "acme", 100, NOW + 60, {}, initial=500) == 100
    assert await store.get_account("acme", initial=999) == Account(500, 100, 0)  # exists now: kept
    assert await store.open_hold("k", "acme", 100, NOW + 60, {}, initial=999) == 100
    assert await store.grant("fresh", 10, initial=5) == 15
    assert (await store.settle("s", "gone", 7, {"ended_at": NOW}, initial=50))["credits"] == 7
    assert await store.get_account("gone") == Account(43, 0, 7)


async def test_a_hold_needs_its_minimum_free(store):
    await store.seed_account("low", 30)
    assert await store.open_hold("a", "low", 100, NOW + 60, {}, minimum=40) == 0
    assert await store.open_hold("a", "low", 100, NOW + 60, {}, minimum=30) == 30
    assert await store.open_hold("b", "low", 5, NOW + 60, {}, minimum=1) == 0
    assert await store.get_account("low") == Account(30, 30, 0)


async def test_recent_usage_is_completed_runs_of_the_flow_newest_first(store):
    await store.seed_account("acme", 10_000)
    runs = [("wf", "completed", 10), ("wf", "credits_cut", 99), ("other", "completed", 7),
            ("wf", "completed", 20), ("wf", "completed", 30)]
    for i, (flow, outcome, tokens) in enumerate(runs):
        await store.open_hold(f"u{i}", "acme", 100, NOW + 60, {"flow": flow})
        await store.settle(f"u{i}", "acme", tokens, {"flow": flow, "outcome": outcome, "output_tokens": tokens,
                                                     "ended_at": NOW + i})
    assert await store.recent_usage("acme", "wf", 50) == [30, 20, 10]
    assert await store.recent_usage("acme", "wf", 2) == [30, 20]
    assert await store.recent_usage("acme", "other", 50) == [7]
    assert await store.recent_usage("acme", "nothing", 50) == []


async def test_a_hold_the_store_lost_is_opened_again_by_its_growth(store):
    await store.seed_account("acme", 1000)
    assert await store.grow_hold("lost", "acme", 100, NOW + 60) == 0  # nothing to reopen it with
    assert await store.grow_hold("lost", "acme", 100, NOW + 60, reopen={"flow": "wf"}, initial=5) == 100
    assert await store.get_account("acme") == Account(1000, 100, 0)
    await store.settle("lost", "acme", 30, {"ended_at": NOW})
    assert await store.grow_hold("lost", "acme", 100, NOW + 60, reopen={"flow": "wf"}) == 0  # settled: never
    assert await store.get_account("acme") == Account(970, 0, 30)


async def test_releasing_holds_of_a_re_created_account_never_takes_held_below_zero(store):
    """The account was lost but its holds survived (evicted keys, deleted rows): the re-created
    account does not count them, and settling them does not drive ``held`` negative."""
    await store.seed_account("acme", 1000)
    assert await store.open_hold("old", "acme", 800, NOW + 60, {}) == 800
    await _forget_account(store, "acme")
    entry = await store.settle("old", "acme", 50, {"ended_at": NOW}, initial=1000)
    assert entry["credits"] == 50
    assert await store.get_account("acme") == Account(950, 0, 50)
    assert await store.open_hold("new", "acme", 5000, NOW + 60, {}) == 950


async def test_recent_usage_skips_what_is_not_a_whole_number(store):
    await store.seed_account("acme", 10)
    await store.settle("big", "acme", 0, {"flow": "wf", "outcome": "completed", "output_tokens": 2**60,
                                          "ended_at": NOW})
    assert await store.recent_usage("acme", "wf", 10) == [2**53 - 1]


async def _forget_account(store, account: str) -> None:
    store = getattr(store, "inner", store)
    if hasattr(store, "accounts"):  # memory
        del store.accounts[account]
    elif hasattr(store, "db"):  # sqlite
        await store.db.write(lambda db: db.execute("DELETE FROM accounts WHERE account = ?", (account,)))
    elif hasattr(store, "schema"):  # postgres
        await store._run(lambda conn: conn.execute("DELETE FROM accounts WHERE account = $1", account))
    else:  # redis, redis cluster
        await store._r.delete(store._acct(account))


def _key(key_id: str, digest: str, **extra) -> dict:
    return {"id": key_id, "sha256": digest, "owner": "acme", "policies": ["Execute"], "tenant": None,
            "workspace": None, "envs": None, "rate_limit": None, "created_at": NOW, "expires_at": None, **extra}


async def test_keys_put_list_delete_and_version(store):
    assert await store.keys_version() == 0
    assert await store.list_keys() == []
    assert await store.put_key(_key("k1", "a" * 64)) == "ok"
    v1 = await store.keys_version()
    assert v1 > 0
    assert await store.put_key(_key("k2", "b" * 64, expires_at=NOW + 5, envs=["Production"])) == "ok"
    v2 = await store.keys_version()
    assert v2 > v1
    assert [k["id"] for k in await store.list_keys()] == ["k1", "k2"]  # oldest first
    assert (await store.list_keys())[1] == _key("k2", "b" * 64, expires_at=NOW + 5, envs=["Production"])
    # a taken id or secret changes nothing (not even the version)
    assert await store.put_key(_key("k1", "c" * 64)) == "id_taken"
    assert await store.put_key(_key("k3", "a" * 64)) == "hash_taken"
    assert await store.keys_version() == v2
    assert await store.delete_key("k1") is True
    assert await store.keys_version() > v2
    assert await store.delete_key("k1") is False
    assert [k["id"] for k in await store.list_keys()] == ["k2"]
    # the secret of a deleted key may be used again
    assert await store.put_key(_key("k4", "a" * 64)) == "ok"


async def test_keys_unknown_fields_are_dropped(store):
    assert await store.put_key({**_key("k5", "d" * 64), "secret": "fg_never"}) == "ok"
    assert "secret" not in (await store.list_keys())[0]


async def test_concurrent_key_puts_take_an_id_once(store):
    results = await asyncio.gather(*(store.put_key(_key("same", f"{i:064x}")) for i in range(20)))
    assert results.count("ok") == 1
    assert len(await store.list_keys()) == 1


async def test_concurrent_settles_of_one_job_charge_once(store):
    await store.seed_account("acme", 1000)
    await store.open_hold("twice", "acme", 100, NOW + 60, {"flow": "wf"})
    results = await asyncio.gather(*(store.settle("twice", "acme", 30, {"outcome": "completed", "ended_at": NOW})
                                     for _ in range(10)))
    assert sum(r is not None for r in results) == 1
    assert await store.get_account("acme") == Account(970, 0, 30)
    assert [e["job_id"] for e in await store.ledger("acme")] == ["twice"]


async def test_concurrent_key_puts_take_a_hash_once(store):
    results = await asyncio.gather(*(store.put_key(_key(f"id{i}", "e" * 64)) for i in range(20)))
    assert results.count("ok") == 1 and results.count("hash_taken") == 19
    assert len(await store.list_keys()) == 1 and await store.keys_version() == 1


async def test_a_runs_store_calls_leave_nothing_for_the_cyclic_gc(store):
    """A run's calls (a token put and spent, a hold opened on a missing account, grown,
    checkpointed and settled) leave no reference cycle: what they allocate is freed as soon as it
    is dropped, not by the cyclic GC, whose passes a busy gateway pays for. (SQLite's hold opener
    once called itself through its closure: 13 objects of garbage per run.)"""

    async def one(i: int) -> None:
        await store.put_token(f"gc{i}", {"owner": "gc", "key_id": "k", "flow_id": None}, NOW + 60)
        assert (await store.consume_token(f"gc{i}"))[0] == "ok"
        assert await store.open_hold(f"gcj{i}", f"gc{i}", 100, NOW + 60, {"flow": "wf"}, initial=1000) == 100
        assert await store.grow_hold(f"gcj{i}", f"gc{i}", 50, NOW + 90, initial=1000) == 50
        await store.checkpoint([Progress(f"gcj{i}", f"gc{i}", 120, 1, 120, NOW + 90)])
        entry = {"ended_at": NOW, "outcome": "completed", "flow": "wf", "output_tokens": 120}
        assert (await store.settle(f"gcj{i}", f"gc{i}", None, entry, initial=1000))["credits"] == 120

    for i in range(20):  # warm: a driver's caches, prepared statements, a connection to each node (redis-py
        await one(i)  # leaves a cycle per new connection: an exception its handshake catches)
    gc.collect()
    gc.disable()
    try:
        for i in range(20, 40):
            await one(i)
        left = gc.collect()
    finally:
        gc.enable()
    assert left == 0
