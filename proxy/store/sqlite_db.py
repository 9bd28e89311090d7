"""One SQLite file used from the event loop: inline with a thread fallback, group commit, checkpoints.

Every write runs inside a ``BEGIN IMMEDIATE`` transaction: SQLite serializes writers across
processes sharing the file. Writes are group-committed: the ones issued during one turn of the
event loop are queued and run together in one transaction at the end of it (what a commit costs
is its WAL writes, so a hundred concurrent runs share one instead of paying a hundred); each caller
gets its result only once the COMMIT is done. If one operation of a batch raises, the batch is
rolled back and every operation re-run in a transaction of its own, so one failure never takes
another caller's write with it.

Batches first run inline on the event loop on a connection with ``busy_timeout=0`` (a short WAL
transaction takes tens of microseconds, far less than a thread hand-off); if another process holds
the write lock, the batch moves to one dedicated thread whose connection waits up to
``busy_timeout`` for it, so the loop never waits on a lock. The inline connection never checkpoints
the WAL itself (no fsync on the loop); the thread does, every two seconds, and restarts it once it
is long. Past the busy timeout a call raises StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from ..errors import StoreUnavailable

T = TypeVar("T")
log = structlog.get_logger("flowgate.store")

# PASSIVE, on the store thread: a restart then has little left to copy (without them it took 70-90 ms,
# not 25, and the lines forwarded meanwhile waited for it)
CHECKPOINT_EVERY_S = 2.0
# A WAL file past this size is checkpointed whole and truncated (looked at every WAL_CHECK_EVERY_S).
# A PASSIVE checkpoint never does it: the WAL starts again from its beginning only once every frame
# is copied back, and under steady load frames arrive while it copies, so the file grew without
# bound (550 MB after 100,000 token runs, each store operation ~25 % dearer: docs/benchmark.md).
WAL_RESTART_BYTES = 64 << 20
WAL_CHECK_EVERY_S = 0.25


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _lost_schema(results: list[tuple[bool, Any]]) -> bool:
    """Whether a table is gone (an emptied database file): the schema is made again, not only at start."""
    return any(not ok and isinstance(v, sqlite3.OperationalError) and "no such table" in str(v) for ok, v in results)


class LoopDatabase:
    """The file behind :class:`~proxy.store.sqlite.SqliteStore`: ``write(fn)`` for a
    check-and-change (``fn(connection)`` inside the loop turn's transaction), ``call(fn)`` for a
    read. ``schema`` runs at every start (``CREATE ... IF NOT EXISTS``)."""

    def __init__(self, path: str, busy_timeout_ms: int, schema: str) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.schema = schema
        self._pool: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None  # the store thread's connection
        self._inline: sqlite3.Connection | None = None  # the event loop's (busy_timeout 0)
        self._checkpointer: asyncio.Future | None = None
        self._checkpointing = False  # a checkpoint is under way: the batch waits for it
        self._on_thread = 0  # batches on the store thread, not yet done: later ones queue behind them
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]] = []

    @property
    def inline(self) -> sqlite3.Connection | None:
        return self._inline

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)``: inline when the lock is free, else on the store thread."""
        if self._pool is None or self._inline is None:
            raise StoreUnavailable("the store is not started")
        try:
            return fn(self._inline, *args)
        except sqlite3.OperationalError as exc:
            if _lost_schema([(False, exc)]):
                try:
                    self._inline.executescript(self.schema)
                    return fn(self._inline, *args)
                except sqlite3.Error as again:
                    exc = again  # noqa: PLW2901 - busy: on to the store thread below
            if not _is_busy(exc):
                raise StoreUnavailable(f"sqlite: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self._db, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"sqlite: {exc}") from None

    @staticmethod
    def _tx(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one BEGIN IMMEDIATE transaction on ``db``."""
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future:
        """Queue ``fn(db)`` for this loop turn's group commit; the future holds its result."""
        if self._pool is None or self._inline is None:
            raise StoreUnavailable("the store is not started")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.append((fn, fut))
        return fut

    @staticmethod
    def _run_batch(db: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        """All of ``fns`` in one transaction; if one raises, each in its own. Busy errors propagate."""
        db.execute("BEGIN IMMEDIATE")
        try:
            results: list[tuple[bool, Any]] = [(True, fn(db)) for fn in fns]
        except sqlite3.OperationalError as exc:
            db.execute("ROLLBACK")
            if _is_busy(exc) or len(fns) == 1:
                raise
            return [LoopDatabase._run_alone(db, fn) for fn in fns]
        except Exception:
            db.execute("ROLLBACK")
            if len(fns) == 1:
                raise
            return [LoopDatabase._run_alone(db, fn) for fn in fns]
        db.execute("COMMIT")
        return results

    def _run_restoring(self, db: sqlite3.Connection, fns: list[Callable[[sqlite3.Connection], Any]]):
        """:meth:`_run_batch`; the operations that found a table gone (an emptied database file) are
        made once more after the schema is (those that committed alone are not run twice)."""
        try:
            results = self._run_batch(db, fns)
        except sqlite3.OperationalError as exc:
            if not _lost_schema([(False, exc)]):
                raise
            results = [(False, exc)]
        lost = [i for i, result in enumerate(results) if _lost_schema([result])]
        if not lost:
            return results
        db.executescript(self.schema)
        for i in lost:
            results[i] = self._run_alone(db, fns[i])
        return results

    @staticmethod
    def _run_alone(db: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> tuple[bool, Any]:
        try:
            return True, LoopDatabase._tx(db, fn)
        except Exception as exc:
            return False, exc

    def _flush(self) -> None:
        if self._checkpointing:  # the batch waits for the checkpoint (it grows meanwhile, in order)
            return
        batch, self._batch = self._batch, []
        batch = [(fn, fut) for fn, fut in batch if not fut.cancelled()]
        if not batch:
            return
        fns = [fn for fn, _ in batch]
        if self._inline is None or self._pool is None:
            results: list[tuple[bool, Any]] = [(False, StoreUnavailable("the store is not started"))] * len(batch)
        else:
            try:
                # batches already on the store thread commit first (a caller's writes commit in
                # the order it made them): behind them
                if self._on_thread:
                    raise sqlite3.OperationalError("database is locked")
                results = self._run_restoring(self._inline, fns)
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):  # another process holds the write lock: wait for it off the loop
                    task = asyncio.get_running_loop().run_in_executor(self._pool, self._run_restoring, self._db, fns)
                    self._on_thread += 1
                    task.add_done_callback(lambda t: self._deliver(batch, t))
                    return
                results = [(False, exc)]
            except Exception as exc:
                results = [(False, exc)]
        self._settle_futures(batch, results)

    def _deliver(self, batch: list, task: asyncio.Future) -> None:
        self._on_thread -= 1
        try:
            results = task.result()
        except Exception as exc:
            results = [(False, exc)]
        self._settle_futures(batch, results)

    @staticmethod
    def _settle_futures(batch: list, results: list[tuple[bool, Any]]) -> None:
        if len(results) != len(batch):  # one error for the whole batch
            results = results * len(batch)
        for (_, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            elif isinstance(value, sqlite3.Error):
                fut.set_exception(StoreUnavailable(f"sqlite: {value}"))
            else:
                fut.set_exception(value)

    def _connect(self, busy_timeout_ms: int, autocheckpoint: bool) -> sqlite3.Connection:
        # setup waits like the store thread does (another process may be creating the file or
        # switching it to WAL); only then does the connection get its own busy timeout
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=self.busy_timeout_ms / 1000)
        db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        if not autocheckpoint:
            db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        return db

    def _open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if self._db is None:  # a retried start keeps the connection it already has
            self._db = self._connect(self.busy_timeout_ms, autocheckpoint=True)
        self._db.executescript(self.schema)

    def _checkpoint_wal(self, restart: bool) -> bool:
        """PASSIVE (other processes' writers go on); ``restart``: TRUNCATE, the WAL copied back
        whole and emptied, which other processes' writers wait for as for any writer. This
        process's writes wait on the loop meanwhile, not run until it is done (see
        ``_checkpoint_forever``; for a restart, were they to go on inline the checkpoint's busy
        handler could wait for a free moment for a long time; run on this thread behind it, their
        Python contended with the loop for the GIL). The loop never waits. True when every frame
        was copied back (and, restarting, the WAL emptied); False: a reader holds older frames, or
        the write lock stayed busy.

        A restart holds the write lock while it waits for readers (a report, a backup, an operator's
        shell), and every writer of every process waits with it: it waits half the busy timeout at
        most, so that another process's writer, waiting the whole of it, never fails for it."""
        db = self._db
        if db is None:
            return False
        if not restart:
            _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return copied >= frames
        db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms // 2}")
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            db.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return not busy

    def _release_deferred(self) -> None:
        """The writes that waited for a checkpoint: one batch, now (no flush is pending for them:
        :meth:`write` asks for one only when the batch was empty)."""
        if self._batch:
            asyncio.get_running_loop().call_soon(self._flush)

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self.path + "-wal").st_size
        except OSError:
            return 0

    async def _checkpoint_forever(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        blocked = False  # the last restart waited its whole time in vain (for a reader of older frames)
        failing = False  # the last checkpoint failed (logged once, when checkpoints start failing)
        while True:
            await asyncio.sleep(WAL_CHECK_EVERY_S)
            restart = self._wal_bytes() >= WAL_RESTART_BYTES
            if not restart and loop.time() - last < CHECKPOINT_EVERY_S:
                continue
            last = loop.time()
            # until it is done, this process's writes wait for it on the loop: a commit made
            # meanwhile (its WAL writes) could wait in the kernel behind the checkpoint's fsync, and
            # the loop with it (lines forwarded within 50 ms of a checkpoint: p99 4.4 ms; 2.1 when
            # they wait; a checkpoint takes 3-40 ms every 2 s)
            self._checkpointing = True
            began = loop.time()
            try:
                # after a restart that waited in vain, first PASSIVE (other processes' writers go
                # on): the restart only once no reader holds older frames (else it would stall
                # every writer again, at every look)
                if restart and blocked and not await loop.run_in_executor(self._pool, self._checkpoint_wal, False):
                    continue
                done = await loop.run_in_executor(self._pool, self._checkpoint_wal, restart)
            except Exception as exc:  # never the end of checkpoints (the WAL would grow unbounded again)
                busy = isinstance(exc, sqlite3.OperationalError) and _is_busy(exc)
                if not busy and not failing:  # (a persistent fault, a full disk: once, not every look)
                    log.warning("sqlite_checkpoint_failed", error=type(exc).__name__)
                failing = failing or not busy
                continue
            finally:
                self._checkpointing = False
                self._release_deferred()
            failing = False
            # (not another process's checkpoint under way: that one answers at once)
            blocked = restart and not done and loop.time() - began >= self.busy_timeout_ms / 2000
            log.debug("sqlite_checkpoint", mode="truncate" if restart else "passive", complete=done,
                      ms=round((loop.time() - began) * 1000, 1), wal_bytes=self._wal_bytes())

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flowgate-sqlite")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_timeout_ms / 1000
        while True:
            try:
                await loop.run_in_executor(self._pool, self._open)
                self._inline = await loop.run_in_executor(self._pool, self._connect, 0, False)
                break
            except sqlite3.OperationalError as exc:
                # two processes opening a new file at once: switching it to WAL can be refused
                # without waiting on the busy timeout, so wait here
                if not _is_busy(exc) or loop.time() > deadline:
                    raise StoreUnavailable(f"sqlite: {exc}") from None
                await asyncio.sleep(0.05)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite: {exc}") from None
        self._checkpointer = asyncio.ensure_future(self._checkpoint_forever())

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        inline, self._inline = self._inline, None  # (a write made meanwhile fails as "not started")
        if inline is not None:
            inline.close()
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._db.close)
        self._pool.shutdown(wait=True)
        self._pool, self._db, self._inline, self._checkpointer = None, None, None, None
