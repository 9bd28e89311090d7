"""First-hold sizing: a percentile of the flow's recent completed runs, clamped to [floor, quantum]."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import StoreUnavailable
from proxy.policies.hold_size import HoldSizer, percentile


def test_percentile_is_nearest_rank():
    assert percentile([5], 90) == 5
    assert percentile(list(range(1, 101)), 90) == 90
    assert percentile(list(range(1, 11)), 90) == 9
    assert percentile([100] * 9 + [5000], 90) == 100  # one long run does not size every hold
    assert percentile([1, 2, 3], 100) == 3


class FakeStore:
    def __init__(self, samples: list[int]) -> None:
        self.samples = samples
        self.reads = 0
        self.fail = False

    async def recent_usage(self, account: str, flow: str, limit: int) -> list[int]:
        self.reads += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise StoreUnavailable("down")
        return self.samples[:limit]


def limits(**kw):
    base = {"credit_hold_percentile": 90.0, "credit_hold_window_runs": 50, "credit_hold_refresh_s": 0.05,
            "credit_hold_floor_tokens": 16, "credit_quantum_tokens": 1000}
    return SimpleNamespace(**{**base, **kw})


async def test_no_history_holds_a_quantum_then_the_estimate_clamped():
    store = FakeStore([])
    sizer = HoldSizer(store, limits())
    assert await sizer.first_hold_tokens("acme", "wf") == 1000
    sizer.settled("wf", 100)  # a local settlement counts at once
    assert await sizer.first_hold_tokens("acme", "wf") == 100
    sizer.settled("wf", 3)
    sizer.settled("wf", 2)
    sizer.settled("wf", 1)
    assert await sizer.first_hold_tokens("acme", "wf") == 100  # p90 of [1, 2, 3, 100]
    store.samples = [1, 1, 1]
    await asyncio.sleep(0.06)
    await sizer.first_hold_tokens("acme", "wf")  # stale: refreshed behind this admission
    await asyncio.sleep(0.03)
    assert await sizer.first_hold_tokens("acme", "wf") == 16  # the floor
    store.samples = [50_000]
    await asyncio.sleep(0.06)
    await sizer.first_hold_tokens("acme", "wf")
    await asyncio.sleep(0.03)
    assert await sizer.first_hold_tokens("acme", "wf") == 1000  # at most a quantum


async def test_concurrent_first_admissions_share_one_read_and_a_dead_store_keeps_the_estimate():
    store = FakeStore([200] * 10)
    sizer = HoldSizer(store, limits())
    assert await asyncio.gather(*(sizer.first_hold_tokens("acme", "wf") for _ in range(50))) == [200] * 50
    assert store.reads == 1
    store.fail = True
    await asyncio.sleep(0.06)
    assert await sizer.first_hold_tokens("acme", "wf") == 200
    await asyncio.sleep(0.03)
    assert await sizer.first_hold_tokens("acme", "wf") == 200


@pytest.mark.parametrize("window", [1, 3])
async def test_the_window_keeps_the_most_recent_runs(window):
    sizer = HoldSizer(FakeStore([]), limits(credit_hold_window_runs=window))
    await sizer.first_hold_tokens("acme", "wf")
    for tokens in (900, 800, 50, 40, 30):
        sizer.settled("wf", tokens)
    assert await sizer.first_hold_tokens("acme", "wf") == (30 if window == 1 else 50)


async def test_a_store_that_answers_garbage_keeps_runs_admitted():
    class Broken(FakeStore):
        async def recent_usage(self, account, flow, limit):
            raise ValueError("not a number")

    sizer = HoldSizer(Broken([]), limits())
    assert await sizer.first_hold_tokens("acme", "wf") == 1000  # no estimate: one quantum, no error


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=40), st.lists(st.integers(0, 5000), max_size=300),
       st.integers(1, 100), st.integers(1, 100))
def test_the_kept_order_gives_the_percentile_of_the_window(read, settled, keep, pct):
    """Settlements insert into a sorted copy of the window (no sort per run): after any reads and
    settlements the estimate is the percentile of exactly the last ``keep`` samples."""
    sizer = HoldSizer(FakeStore(read), SimpleNamespace(credit_hold_percentile=pct, credit_hold_window_runs=keep,
                                                        credit_hold_refresh_s=60, credit_quantum_tokens=10**9,
                                                        credit_hold_floor_tokens=0))
    usage = sizer._flow("f")
    usage.samples.extend(read)
    usage.ordered = sorted(usage.samples)
    for tokens in settled:
        sizer.settled("f", tokens)
        assert usage.ordered == sorted(usage.samples)
        assert usage.estimate == percentile(list(usage.samples), pct)
