"""Runs' credit checkpoints, written to the store in batches.

A run checkpoints its metering on its hold at every growth and at least once a second
(:mod:`proxy.policies.credits`), so that a replica that dies mid-run is settled from its last
checkpoint by another. With hundreds of runs open, each checkpoint as a store operation of its own
(a task, a transaction or a round trip each) cost about 3 % of a forwarded line's CPU. Here they
are gathered for ``GATHER_S`` and written as one store operation (one SQLite transaction, one
PostgreSQL statement, one burst of Redis scripts).

Order: one batch is in flight at a time, and a run's later checkpoint replaces its earlier one
while both wait, so a hold never goes back to an older count. A run that settles drops its
pending checkpoint (the settlement records the final count); a checkpoint that reaches a hold
already settled finds none and does nothing, in every store.
"""

from __future__ import annotations

import asyncio

import structlog

from ..errors import StoreUnavailable
from ..store import Progress, Store

log = structlog.get_logger("flowgate.credits")

# how long a checkpoint waits for others to share its write: well under the checkpoint interval
# (1 s), so a replica lost mid-run is settled from a count at most ~1.05 s old
GATHER_S = 0.05


class Checkpoints:
    """The pending checkpoints of one process's runs (``add``), flushed every ``GATHER_S``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.due: dict[str, Progress] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task | None = None

    def add(self, progress: Progress) -> None:
        self.due[progress.job_id] = progress  # a newer count replaces a waiting one
        if self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)

    def drop(self, job_id: str) -> None:
        """The run is settling: its waiting checkpoint is moot."""
        self.due.pop(job_id, None)

    def _flush(self) -> None:
        self._timer = None
        if self.due:
            batch, self.due = list(self.due.values()), {}
            self._writing = asyncio.ensure_future(self._write(batch))

    async def _write(self, batch: list[Progress]) -> None:
        try:
            await self.store.checkpoint(batch)
        except StoreUnavailable:
            log.warning("checkpoint_failed", runs=len(batch))
        except Exception as exc:  # never lose the batcher to one bad batch
            log.error("checkpoint_failed", runs=len(batch), error=type(exc).__name__)
        finally:
            self._writing = None
            if self.due and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)

    async def flush(self) -> None:
        """Write what waits now, after what is being written (tests; a clean shutdown)."""
        while True:
            if self._writing is not None:
                await asyncio.shield(self._writing)
                continue
            if not self.due:
                return
            if self._timer is not None:
                self._timer.cancel()
            self._flush()
