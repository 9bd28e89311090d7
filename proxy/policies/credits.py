"""Credit metering: the flow's owner pays for the tokens its runs generate.

Admission places an atomic first hold sized from what the flow's recent runs really used
(:mod:`proxy.policies.hold_size`: a percentile of their output tokens, between a small floor and
one quantum), or what the owner has free if that is less; an owner whose free balance cannot pay
the floor gets 402 before any backend request. While the run streams, ``on_event`` compares what
has been metered (``run.meter``: the backend's reported output tokens, else ceil(chars / 4)) with
the hold. Crossing it grows the hold, atomically in the store, by at least what the hold already
is (at most a quantum at a time): a run that needs more than its estimate doubles its hold a few
times instead of taking a quantum other runs could have used.

When nothing more can be held, ``on_credits_exhausted: cut`` ends the stream at once and charges
no more than was held (a balance never goes below 0); ``allow`` lets the run go on for one more
quantum past what it holds, then cuts it (an owner never goes below -(concurrent runs x quantum)).
Progress is checkpointed in the store at every growth and at least every second, so a hold whose
replica died is settled from its last checkpoint by any live replica (see
:func:`sweep_expired_holds`); a process's checkpoints are written in batches
(:mod:`proxy.policies.checkpoints`). ``on_complete`` settles exactly once: it charges what was metered
(up to that ceiling), releases the rest and writes one ledger entry, keyed like everything else by
the run's own job id.

The hot path costs one comparison per event; the store is touched only when the hold must grow
and at most once a second for a checkpoint (queued for the next batch: the stream never waits).

A run that crosses quanta faster than once a second (a bulk stream, not a model generating text)
holds ahead: each growth less than a second after the previous one doubles the step, up to
``MAX_STEP_QUANTA`` quanta (1,024: a million tokens at the default quantum, which only a stream of
over 4 MB of text a second reaches, and then holds at most about a second ahead), so a 1 GiB text
stream costs ~550 store writes rather than a growth and a checkpoint at every 64 KiB chunk. Its
checkpoints (one per growth) are then up to that many quanta apart. (At 64 quanta the growths,
~8,000 per GiB with their Python hooks, held a bulk stream to 0.65 × nginx's throughput; at 1,024
it is 1.7 ×: docs/benchmark.md.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from .. import metrics as m
from ..errors import NoCredits, StoreUnavailable
from ..protocols import Event
from ..run import COMPLETED, CREDITS_CUT, Run
from ..store import Progress
from .base import Policy, StopRun
from .checkpoints import Checkpoints

if TYPE_CHECKING:
    from ..balances import Balances
    from .hold_size import HoldSizer

log = structlog.get_logger("flowgate.credits")
CHECKPOINT_EVERY_S = 1.0
MAX_STEP_QUANTA = 1024


def credits_for(tokens: int, per_1k: int) -> int:
    """Credits for ``tokens`` at ``per_1k`` credits per 1,000 tokens, rounded up."""
    return -(-tokens * per_1k // 1000)


def covered_tokens(held: int, per_1k: int) -> int:
    """The most tokens ``held`` credits pay for: credits_for(t) <= held  <=>  t <= this."""
    return held * 1000 // per_1k if per_1k else 0


@dataclass(slots=True)
class RunHold:
    """One run's credit hold as the credits policy tracks it while the run goes on (the store keeps
    its own record of the hold: :class:`proxy.store.Hold`)."""

    account: str
    per_1k: int
    quantum: int  # credits: the largest growth unit
    held: int  # credits held in the store for this job
    allow_overrun: bool
    expires_at: float
    covered: int = 0  # the most tokens the run may meter before on_event acts (the hot path compares tokens)
    last_checkpoint: float = 0.0
    checkpointed_tokens: int = -1
    step: int = 1  # growth units per growth: doubles while growths come less than a second apart
    last_grow: float = 0.0
    initial: int = 0  # the account's initial credits (a store that lost the account re-creates it)
    meta: dict | None = None  # what the hold was opened with (a store that lost the hold opens it again)

    @property
    def ceiling(self) -> int:
        """The most this run may be charged: what it holds, plus one quantum under ``allow``."""
        return self.held + self.quantum if self.allow_overrun else self.held


monotonic = time.monotonic


class Credits(Policy):
    name = "credits"

    def __init__(self, config, store, sizer: HoldSizer | None = None, balances: Balances | None = None,
                 checkpoints: Checkpoints | None = None) -> None:
        super().__init__(config, store)
        self.sizer = sizer  # first holds sized from the flow's recent runs (shared by the chains)
        self.balances = balances  # the balance gauge, told of each settlement
        # this process's runs' checkpoints, written in batches: the gateway's, one per process and
        # flushed at its shutdown (a policy made without one, in a test, gets its own)
        self.checkpoints = checkpoints if checkpoints is not None else Checkpoints(store)

    def _expiry(self, run: Run) -> float:
        assert run.flow is not None
        limits = self.config.limits
        return run.started_at + self.config.run_cap_s(run.flow) + limits.hold_grace_s

    async def on_request(self, run: Run) -> None:
        flow = run.flow
        assert flow is not None and run.owner is not None
        per_1k = flow.credits_per_1k_tokens
        limits = self.config.limits
        quantum = max(1, credits_for(limits.credit_quantum_tokens, per_1k))
        account = self.config.accounts.get(run.owner)
        initial = account.initial_credits if account is not None else 0
        expires = self._expiry(run)
        granted = 0
        meta = None
        if per_1k > 0:  # a free flow holds nothing but still gets its ledger entry
            estimate = (await self.sizer.first_hold_tokens(run.owner, flow.id) if self.sizer is not None
                        else limits.credit_quantum_tokens)
            first = max(1, credits_for(estimate, per_1k))
            floor = max(1, credits_for(min(limits.credit_hold_floor_tokens, limits.credit_quantum_tokens), per_1k))
            meta = {"flow": flow.id, "key_id": run.key_id, "env": run.env.value, "dialect": run.dialect,
                    "started_at": run.started_at}
            granted = await self.store.open_hold(run.job_id, run.owner, first, expires, meta,
                                                    minimum=min(first, floor), initial=initial)
            if granted <= 0:
                run.reason = "no_credits"
                raise NoCredits("no credits remaining on the account")
        run.extra[self.name] = RunHold(run.owner, per_1k, quantum, granted, flow.on_credits_exhausted == "allow",
                                    expires, covered_tokens(granted, per_1k), last_checkpoint=time.monotonic(),
                                    initial=initial, meta=meta)

    def on_event(self, run: Run, event: Event):
        hold: RunHold | None = run.extra.get("credits")  # (self.name; a constant on the per-event path)
        if hold is None or hold.per_1k == 0:
            return None
        tokens = run.meter.output_tokens
        if tokens > hold.covered:
            return self._grow(run, hold, credits_for(tokens, hold.per_1k))
        now = monotonic()
        if now - hold.last_checkpoint >= CHECKPOINT_EVERY_S and tokens != hold.checkpointed_tokens:
            hold.last_checkpoint = now
            self._checkpoint(run, hold, credits_for(tokens, hold.per_1k))
        return None

    def quiet(self, run: Run) -> tuple[int | None, float]:
        """Quiet up to the characters the hold covers (ceil(chars / 4) tokens <= covered) and
        until the next checkpoint is due."""
        hold: RunHold | None = run.extra.get("credits")
        if hold is None or hold.per_1k == 0:
            return None, math.inf
        if run.meter.reported_output is not None:  # tokens do not follow characters: ask every time
            return 0, 0.0
        return 4 * hold.covered, hold.last_checkpoint + CHECKPOINT_EVERY_S

    async def _grow(self, run: Run, hold: RunHold, cost: int) -> None:
        now = time.monotonic()
        hold.step = min(hold.step * 2, MAX_STEP_QUANTA) if now - hold.last_grow < 1.0 else 1
        hold.last_grow = now
        unit = min(hold.quantum, max(hold.held, 1))  # the hold at least doubles, by a quantum at most
        want = cost - hold.held + unit * hold.step
        try:
            granted = await self.store.grow_hold(run.job_id, hold.account, want, hold.expires_at,
                                                    reopen=hold.meta, initial=hold.initial)
        except StoreUnavailable:
            granted = 0  # fail closed: an unreachable store cannot vouch for more credit
        hold.held += granted
        ceiling = hold.ceiling
        # past what is held, allow's grace quantum covers the run until its next growth attempt
        hold.covered = covered_tokens(hold.held if hold.held >= cost else ceiling, hold.per_1k)
        hold.last_checkpoint = time.monotonic()
        self._checkpoint(run, hold, min(cost, ceiling))
        if ceiling < cost:
            raise StopRun(CREDITS_CUT, "the account ran out of credits")

    def _checkpoint(self, run: Run, hold: RunHold, cost: int) -> None:
        meter = run.meter
        hold.checkpointed_tokens = tokens = meter.output_tokens
        self.checkpoints.add(Progress(run.job_id, hold.account, cost, meter.input_tokens, tokens, hold.expires_at))

    async def on_complete(self, run: Run) -> None:
        hold: RunHold | None = run.extra.get(self.name)
        if hold is None:
            return
        self.checkpoints.drop(run.job_id)  # the settlement records the final count
        # the stream stopped at the first event past the ceiling; what that last chunk carried past
        # it is not charged (cut: a balance never goes below zero; allow: one quantum at most)
        charge = min(credits_for(run.meter.output_tokens, hold.per_1k), hold.ceiling)
        entry = {
            "flow": run.flow_id, "backend_job_id": run.backend_job_id, "key_id": run.key_id,
            "env": run.env.value, "dialect": run.dialect,
            "input_tokens": run.meter.input_tokens, "output_tokens": run.meter.output_tokens,
            "outcome": run.outcome, "reason": run.reason, "status": run.status,
            "started_at": run.started_at, "ended_at": time.time(),
            "duration_s": round(time.monotonic() - run.started_mono, 6),
        }
        for attempt in range(3):
            try:
                settled = await self.store.settle(run.job_id, hold.account, charge, entry, initial=hold.initial)
                break
            except StoreUnavailable:
                # the hold stays in the store with its checkpoint; a live replica settles it later
                if attempt == 2:
                    log.warning("settle_deferred", job_id=run.job_id)
                    # what that replica settles it from: the final count, not the last one queued
                    # before (which the drop above let go)
                    self.checkpoints.add(Progress(run.job_id, hold.account, charge, run.meter.input_tokens,
                                                  run.meter.output_tokens, hold.expires_at))
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
        run.extra["credits_charged"] = charge
        if settled is not None:
            m.child(m.CREDITS, run.flow_id or m.UNKNOWN_FLOW).inc(charge)
            if run.outcome == COMPLETED and run.flow_id is not None and self.sizer is not None:
                self.sizer.settled(run.flow_id, run.meter.output_tokens)
            if self.balances is not None:
                self.balances.changed(hold.account)


async def sweep_expired_holds(gw, now: float | None = None) -> int:
    """Settle the holds whose replica died (expired), each from its last checkpoint; returns how many.

    Settlement is idempotent by job id, so any number of replicas may sweep at once.
    """
    accounts = gw.config.accounts
    count = 0
    for hold in await gw.store.expired_holds(list(accounts), now=now):
        entry = {"outcome": "replica_lost", "ended_at": time.time()}
        initial = accounts[hold.account].initial_credits if hold.account in accounts else 0
        with contextlib.suppress(StoreUnavailable):
            if await gw.store.settle(hold.job_id, hold.account, None, entry, initial=initial) is not None:
                count += 1
                m.HOLDS_RECOVERED.inc()
                gw.balances.changed(hold.account)
    return count
