"""Runs' credit checkpoints, written to the store in batches.

A run checkpoints its metering on its hold at every growth and at least once a second
(:mod:`proxy.policies.credits`), so that a replica that dies mid-run is settled from its last
checkpoint by another. With hundreds of runs open, each checkpoint as a store operation of its own
(a task, a transaction or a round trip each) cost about 3 % of a forwarded line's CPU. Here they
are gathered for ``GATHER_S`` and written as one store operation (one SQLite transaction, one
PostgreSQL statement, one Redis pipeline; on a Redis Cluster one script per hold, sent at once).

Order: one batch is in flight at a time (every store answers for the whole batch before the
next goes), and a run's later checkpoint replaces its earlier one while both wait, so a hold
never goes back to an older count. A run that settles drops its pending checkpoint (the
settlement records the final count); a checkpoint that reaches a hold already settled finds none
and does nothing, in every store.

Failure: a batch the store refuses goes back to wait (a newer count of the same run wins) and is
tried with the next, every ``GATHER_S`` while the store is down; the first failure of a streak is
logged (``checkpoints_failing``) and its end (``checkpoints_written_again``). At shutdown
:meth:`Checkpoints.flush` writes what waits, bounded in time (``checkpoints_abandoned``).
"""

from __future__ import annotations

import asyncio

import structlog

from ..errors import StoreUnavailable
from ..store import Progress, Store

log = structlog.get_logger("flowgate.credits")

# how long a checkpoint waits for others to share its write: well under the checkpoint interval
# (1 s), so a replica lost mid-run is settled from a count ~1.05 s old at most (a store answering)
GATHER_S = 0.05


class Checkpoints:
    """The pending checkpoints of one process's runs (``add``), flushed every ``GATHER_S``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.due: dict[str, Progress] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task | None = None
        self._failed = 0  # batches failed in a row (the first of a streak is logged, then its end)

    def add(self, progress: Progress) -> None:
        self.due[progress.job_id] = progress  # a newer count replaces a waiting one
        if self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)

    def drop(self, job_id: str) -> None:
        """The run is settling: its waiting checkpoint is moot."""
        self.due.pop(job_id, None)

    def _flush(self) -> None:
        self._timer = None
        if self.due and self._writing is None:
            batch, self.due = list(self.due.values()), {}
            self._writing = task = asyncio.ensure_future(self._write(batch))
            task.add_done_callback(self._written)  # (runs even for a task cancelled before it started)

    def _written(self, _task: asyncio.Task) -> None:
        self._writing = None
        if self.due and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)

    async def _write(self, batch: list[Progress]) -> bool:
        try:
            await self.store.checkpoint(batch)
        except Exception as exc:  # (never lose the batcher to one bad batch)
            for progress in batch:  # tried again with the next batch, unless a newer count waits
                self.due.setdefault(progress.job_id, progress)
            self._failed += 1
            if self._failed == 1:  # once per streak, as the store's own store_unreachable
                unavailable = isinstance(exc, StoreUnavailable)
                (log.warning if unavailable else log.error)(
                    "checkpoints_failing", runs=len(batch), error=exc.detail if unavailable else type(exc).__name__)
            return False
        if self._failed:
            log.info("checkpoints_written_again", failed_batches=self._failed)
            self._failed = 0
        return True

    async def flush(self, within: float | None = None) -> None:
        """Write what waits, after the batch on its way; a batch that fails ends it (what failed
        waits for the next). Past ``within`` seconds the batch on its way is cancelled and what
        waits is let go (a shutdown must not hang on an unreachable store)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    if self._writing is None:
                        if not self.due:
                            return
                        if self._timer is not None:
                            self._timer.cancel()
                        self._flush()
                    task = self._writing
                    assert task is not None
                    await asyncio.wait([task])
                    if task.cancelled() or not task.result():
                        return
        except TimeoutError:
            log.warning("checkpoints_abandoned", waiting=len(self.due), within_s=within)
            self.due.clear()
            if self._writing is not None:
                self._writing.cancel()
