"""How big a run's first credit hold is: what its flow's recent runs really used.

A hold of a whole quantum per run strands credits: 200 concurrent runs of 100 tokens on 5,000
credits would admit 5 and refuse 195 while 4,000 credits sit unspent. So the first hold is a high
percentile (``limits.credit_hold_percentile``) of the output tokens of the flow's last
``credit_hold_window_runs`` completed runs, clamped between ``credit_hold_floor_tokens`` and one
quantum; a flow with no history holds one quantum. A run that goes past its first hold grows it
as it streams (:mod:`proxy.policies.credits`).

The runs are read from the store (``Store.recent_usage``, written by every settlement), so all
replicas and a restarted gateway size holds alike; a replica reuses what it read for
``credit_hold_refresh_s`` and folds its own settlements in at once. Only a replica's first
admission of a flow waits for the read (concurrent ones share it); later reads refresh behind the
admissions that asked for them, so a slow store never adds a round trip to a run. A store that
cannot answer keeps the last estimate (one quantum if none).
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left, insort
from collections import deque

import structlog

from ..errors import StoreUnavailable

log = structlog.get_logger("flowgate.credits")


def percentile(samples: list[int], pct: float) -> int:
    """Nearest-rank percentile (the smallest sample with at least ``pct`` % of samples <= it)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


class _FlowUsage:
    __slots__ = ("samples", "ordered", "read_at", "reading", "estimate")

    def __init__(self, keep: int) -> None:
        self.samples: deque[int] = deque(maxlen=keep)  # newest first
        self.ordered: list[int] = []  # the same samples, sorted (a settlement inserts one: no sort per run)
        self.read_at = -math.inf
        self.reading: asyncio.Future | None = None
        self.estimate: int | None = None  # tokens; None: no history


class HoldSizer:
    """First-hold estimates (in tokens) per flow, shared by the gateway's policy chains."""

    def __init__(self, store, limits) -> None:
        self.store = store
        self.pct = limits.credit_hold_percentile
        self.keep = limits.credit_hold_window_runs
        self.refresh_s = limits.credit_hold_refresh_s
        self.quantum = limits.credit_quantum_tokens
        self.floor = min(limits.credit_hold_floor_tokens, self.quantum)
        self.flows: dict[str, _FlowUsage] = {}

    def _flow(self, flow: str) -> _FlowUsage:
        usage = self.flows.get(flow)
        if usage is None:
            usage = self.flows[flow] = _FlowUsage(self.keep)
        return usage

    def _estimate(self, usage: _FlowUsage) -> None:
        """The percentile of ``usage.ordered`` (nearest rank, as :func:`percentile`)."""
        ordered = usage.ordered
        usage.estimate = ordered[max(0, math.ceil(self.pct / 100 * len(ordered)) - 1)] if ordered else None

    async def first_hold_tokens(self, account: str, flow: str) -> int:
        """The first hold of a run of ``flow``, in tokens: floor <= estimate <= quantum."""
        usage = self._flow(flow)
        if usage.reading is None and time.monotonic() - usage.read_at >= self.refresh_s:
            usage.reading = asyncio.ensure_future(self._read(account, flow, usage))
        if usage.read_at == -math.inf and usage.reading is not None:
            await asyncio.shield(usage.reading)  # never read yet: wait for it (later reads refresh behind)
        if usage.estimate is None:
            return self.quantum
        return max(self.floor, min(self.quantum, usage.estimate))

    async def _read(self, account: str, flow: str, usage: _FlowUsage) -> None:
        try:
            samples = await self.store.recent_usage(account, flow, self.keep)
        except StoreUnavailable:
            return  # keep what we had; admission itself fails closed if the store is down
        except Exception:  # a bug must not refuse every run of the flow: keep what we had, say why
            log.exception("hold_estimate_read_failed", flow=flow)
            return
        else:
            usage.samples.clear()
            usage.samples.extend(samples)
            usage.ordered = sorted(usage.samples)
            self._estimate(usage)
            usage.read_at = time.monotonic()
        finally:
            usage.reading = None

    def settled(self, flow: str, output_tokens: int) -> None:
        """A completed run of ``flow`` settled here: it counts at once (the store has it too)."""
        usage = self._flow(flow)
        samples = usage.samples
        if len(samples) == samples.maxlen:  # the oldest leaves the window
            del usage.ordered[bisect_left(usage.ordered, samples[-1])]
        samples.appendleft(output_tokens)
        insort(usage.ordered, output_tokens)
        self._estimate(usage)
