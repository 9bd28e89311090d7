"""``flowgate serve`` with ``server.workers`` above 1: a small supervisor and its workers.

The supervisor binds the listening sockets once (the main port, and ``server.metrics_port`` when
set; one socket per worker slot with SO_REUSEPORT, see :func:`bind`) and forks the workers, which
inherit them (a worker that dies takes no listener with it: the supervisor holds them all). It
serves nothing itself and runs no event loop: one thread waits for signals and for its children,
as nginx's master and gunicorn's arbiter do.

- A worker that dies is started again in its slot, after a backoff that grows while it keeps
  dying young (0.1 s doubling to 10 s; back to the shortest once one lived :data:`STABLE_S`).
  ``flowgate_worker_restarts_total{worker=slot}`` counts them, ``flowgate_workers`` says how many
  run.
- SIGTERM/SIGINT: every worker is told (SIGTERM) and drains its open streams for
  ``server.shutdown_timeout_s``; one that is still there :data:`KILL_GRACE_S` after that is killed.
  Then the supervisor exits 0.
- SIGHUP: the config file is read and validated here, once (:mod:`proxy.front.reload`): invalid,
  nothing changes and one line is logged; valid, the config is handed to the workers and each is
  sent SIGHUP to swap to it. A worker started later starts on it.
- The workers' metrics are pooled through a private directory (:mod:`proxy.front.pooled`).

A worker watches its parent: if the supervisor is gone (killed outright), the worker stops
as on SIGTERM, so that no orphan keeps the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from .. import metrics as m
from ..config import Config
from ..logging import PROCESS_FIELDS
from . import pooled, reload
from .serve import CannotListen, install_uvloop, serve_forever

log = structlog.get_logger("flowgate.supervisor")

STABLE_S = 10.0  # a worker that lived this long was healthy: its next restart is immediate-ish
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 10.0
KILL_GRACE_S = 5.0  # past the drain, how long a worker may take to exit before SIGKILL
TICK_S = 0.5  # the longest the supervisor sleeps without looking at its children
TOUCH_S = 3600.0
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


def bind(config: Config, count: int) -> list[list[socket.socket]]:
    """The listening sockets of each worker slot, bound once, here: the main one, then the metrics
    one and the admin one when configured.

    Where the system has SO_REUSEPORT, each slot gets sockets of its own on the shared port, and
    the kernel spreads new connections over them evenly; the supervisor keeps them open, so a
    connection that arrives while a slot's worker is being replaced waits in its backlog. (One
    shared socket, accepted on by every worker, lets whichever worker wakes first take a whole
    burst of connections: streams would pile up on one core.) Without SO_REUSEPORT every slot
    shares one socket per port.
    """
    server = config.server
    reuse_port = hasattr(socket, "SO_REUSEPORT")
    slots: list[list[socket.socket]] = [[] for _ in range(count)]
    ports = [(server.host, server.port, "the gateway")]
    if server.metrics_port is not None:
        ports.append((server.host, server.metrics_port, "the metrics listener"))
    if server.admin_port is not None:
        ports.append((server.admin_host or server.host, server.admin_port, "the admin listener"))
    for host, port, what in ports:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        for i, sockets in enumerate(slots):
            if i and not reuse_port:
                sockets.append(slots[0][-1])
                continue
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                sock.close()
                for opened in {id(x): x for slot in slots for x in slot}.values():
                    opened.close()
                raise CannotListen(exc, host, port, what) from None
            addr = sock.getsockname()  # port 0: the others join the port the first one got
            sock.listen(server.backlog)
            sock.setblocking(False)
            sockets.append(sock)
    return slots


def backoff_s(failures: int) -> float:
    """The wait before restarting a worker that died ``failures`` times in a row, each young."""
    return min(BACKOFF_MIN_S * 2 ** min(failures - 1, 16), BACKOFF_MAX_S)


@dataclass
class Slot:
    index: int
    pid: int = 0
    serial: int = 0
    started: float = 0.0
    failures: int = 0  # deaths in a row, each before STABLE_S
    due: float | None = None  # when to start it again


class Supervisor:
    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config  # in force: what a worker started now starts on
        self.generation = 0  # reloads taken (a worker started at generation g swaps only to a later one)
        self.next_touch = time.monotonic() + TOUCH_S
        self.served = False  # some worker came up and served (so a death is a crash, not a boot failure)
        self.exit_code = 0
        self.config_path = config_path
        self.slots = [Slot(i) for i in range(config.worker_count())]
        for slot in self.slots:  # at 0 from the start (an alert's increase() then sees the first restart)
            m.child(m.WORKER_RESTARTS, str(slot.index))
        for result in ("applied", "refused"):
            m.child(m.RELOADS, result)
        self.serials = 0
        self.pending: deque[int] = deque()
        self.stopping_until: float | None = None
        self.listeners: list[list[socket.socket]] = []  # per slot
        self.directory = Path(".")
        self.wake_r = self.wake_w = -1

    # --- the loop --------------------------------------------------------------------------------

    def run(self, listeners: list[list[socket.socket]]) -> int:
        self.listeners = listeners
        self.directory = Path(tempfile.mkdtemp(prefix="flowgate-"))  # mode 0700: ours alone
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)
        for sig in SIGNALS:
            signal.signal(sig, self._queue)
        server = self.config.server
        log.info("listening", host=server.host, port=self.listeners[0][0].getsockname()[1],
                 store=self.config.store.split("://")[0], workers=len(self.slots), pid=os.getpid())
        try:
            for slot in self.slots:
                self._start(slot)
            while not self._done():
                with contextlib.suppress(InterruptedError):
                    select.select([self.wake_r], [], [], self._sleep_s())
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 512):
                        pass
                while self.pending:
                    self._on_signal(self.pending.popleft())
                self._reap()
                self._tend()
        finally:
            for slot in self.slots:
                if slot.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)
            self._close_listeners()
            shutil.rmtree(self.directory, ignore_errors=True)
        log.info("stopped", exit_code=self.exit_code)
        return self.exit_code

    def _sleep_s(self) -> float:
        """Until the next restart is due, at most TICK_S."""
        due = [slot.due for slot in self.slots if slot.due is not None and not slot.pid]
        return max(0.0, min([TICK_S, *(d - time.monotonic() for d in due)]))

    def _queue(self, signum: int, frame: object) -> None:
        self.pending.append(signum)

    def _done(self) -> bool:
        return self.stopping_until is not None and not any(slot.pid for slot in self.slots)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stopping_until is None:
                log.info("stopping", signal=signal.Signals(signum).name,
                         drain_s=self.config.server.shutdown_timeout_s)
                self.stopping_until = time.monotonic() + self.config.server.shutdown_timeout_s + KILL_GRACE_S
                self._signal_all(signal.SIGTERM)
                self._close_listeners()  # (each worker closes its copies at once): new connections are refused
        elif signum == signal.SIGHUP and self.stopping_until is None:
            plan = reload.prepared(self.config_path, self.config)
            if plan is not None:
                try:
                    reload.hand_over(self.directory, self.generation + 1, plan.config)
                except OSError as exc:
                    log.error("reload_not_handed_over", error=str(exc), detail="nothing changes")
                    return
                self.config, self.generation = plan.config, self.generation + 1
                self._signal_all(signal.SIGHUP)
            self._save_metrics()

    def _close_listeners(self) -> None:
        for sock in {sock for sockets in self.listeners for sock in sockets}:
            sock.close()

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            served = pooled.worker_file(self.directory, slot.serial).exists()  # written once it serves
            self.served |= served
            try:
                pooled.absorb(self.directory, slot.serial)
            except OSError as exc:  # (a full disk): its counts are lost, the supervisor goes on
                log.error("metrics_archive_failed", worker=slot.index, error=str(exc))
            slot.pid = 0
            how = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}")
            if self.stopping_until is not None:
                log.info("worker_stopped", worker=slot.index, pid=pid, how=how)
                continue
            if not self.served and not any(self.directory.glob("worker-*.json")):
                # no worker ever came up (the store cannot be opened, say): restarting cannot help
                log.error("workers_cannot_start", worker=slot.index, pid=pid, how=how,
                          detail="no worker ever served; the first one's error is above")
                self.exit_code = 1
                self._on_signal(signal.SIGTERM)
                continue
            lived = time.monotonic() - slot.started
            slot.failures = slot.failures + 1 if lived < STABLE_S else 1
            delay = backoff_s(slot.failures)
            slot.due = time.monotonic() + delay
            log.warning("worker_died", worker=slot.index, pid=pid, how=how, lived_s=round(lived, 3),
                        restart_in_s=delay)
            self._save_metrics()

    def _tend(self) -> None:
        now = time.monotonic()
        if now >= self.next_touch:  # keep the private directory fresh for /tmp cleaners (tmpfiles.d)
            self.next_touch = now + TOUCH_S
            with contextlib.suppress(OSError):
                for path in [self.directory, *self.directory.iterdir()]:
                    os.utime(path)
        if self.stopping_until is not None:
            if now >= self.stopping_until:
                self._signal_all(signal.SIGKILL)
            return
        for slot in self.slots:
            if not slot.pid and slot.due is not None and now >= slot.due:
                m.child(m.WORKER_RESTARTS, str(slot.index)).inc()
                self._start(slot)

    def _save_metrics(self) -> None:
        m.WORKERS.set(sum(1 for slot in self.slots if slot.pid))
        with contextlib.suppress(OSError):
            pooled.save_supervisor(self.directory)

    # --- a worker ----------------------------------------------------------------------------------

    def _start(self, slot: Slot) -> None:
        self.serials += 1
        slot.serial, slot.due, slot.started = self.serials, None, time.monotonic()
        pid = os.fork()
        if pid:
            slot.pid = pid
            self._save_metrics()
            return
        code = 1
        try:
            self._in_worker(slot)
            loop = install_uvloop()
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._serve(slot))
            code = 0
        except BaseException:  # noqa: BLE001 - a worker reports whatever ended it, then exits
            traceback.print_exc()
        finally:
            os._exit(code)  # never back into the supervisor's stack (its finally blocks, atexit)

    def _in_worker(self, slot: Slot) -> None:
        signal.set_wakeup_fd(-1)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload while it starts: taken once it serves
        os.close(self.wake_r)
        os.close(self.wake_w)
        pooled.reset_supervisor_series()
        PROCESS_FIELDS["worker"] = slot.index
    async def _serve(self, slot: Slot) -> None:
        pooled.start_worker(self.directory, slot.serial)
        parent = os.getppid()
        tasks = [asyncio.create_task(_watch_parent(parent))]
        ready = asyncio.get_running_loop().create_future()  # set once it serves: then it saves its metrics
        ready.add_done_callback(lambda _: tasks.append(asyncio.create_task(pooled.keep_saving())))
        seen = self.generation  # the config it was forked with

        def source(running: Config) -> Config | None:
            nonlocal seen
            handed = reload.taken_over(self.directory)
            if handed is None or handed[0] <= seen:
                return None
            seen = handed[0]
            return handed[1]

        try:
            await serve_forever(self.config, listeners=self.listeners[slot.index], worker=slot.index,
                                reload_source=source, ready=ready)
        finally:
            for task in tasks:
                task.cancel()
            if ready.done():
                with contextlib.suppress(OSError):
                    pooled.save()  # after the drain: every run this worker ended is counted
            if os.getppid() != parent:  # orphaned: no supervisor is left to remove its directory
                shutil.rmtree(self.directory, ignore_errors=True)


async def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:  # noqa: ASYNC110 - a parent's death raises no event to wait on
        await asyncio.sleep(1.0)
    log.warning("supervisor_gone", parent=parent)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(config: Config, config_path: str) -> int:
    """``flowgate serve``: one process for ``server.workers: 1``, else the supervisor and its workers."""
    pid_file = Path(config.server.pid_file) if config.server.pid_file else None
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    try:
        if config.worker_count() == 1:
            return _serve_single(config, config_path)
        listeners = bind(config, config.worker_count())  # CannotListen: one line, said by the CLI
        return Supervisor(config, config_path).run(listeners)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                pid_file.unlink()


def _serve_single(config: Config, config_path: str) -> int:
    def source(running: Config) -> Config | None:
        plan = reload.prepared(config_path, running)
        return plan.config if plan is not None else None

    m.WORKERS.set(1)
    loop = install_uvloop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_forever(config, reload_source=source))
    finally:
        loop.close()
    return 0
