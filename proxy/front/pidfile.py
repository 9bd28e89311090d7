"""``server.pid_file``: ``flowgate serve`` writes its process id there and holds an exclusive
``flock`` on the file while it runs; ``flowgate reload`` signals the pid only while that lock is held.

Why a lock, not the pid alone: a pid file outlives a server killed outright (SIGKILL, the OOM
killer, a power cut), and its pid soon belongs to another process; SIGHUP's default action ends a
process, so a reload sent by a stale file would kill an unrelated one. The kernel drops a flock
when its holder ends, however it ends, so a held lock means a server is there. (PostgreSQL checks
its postmaster.pid the same way before trusting it.) The workers close their inherited copy at
once: a supervisor killed outright leaves no lock behind in its orphans.

A pid that is not one process (``0``: the caller's process group; negative: a group, or every
process) is refused before anything is signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

MAX_PID = 2**22  # the ceiling of Linux's kernel.pid_max
BUSY_RETRY_S = 0.2  # a `flowgate reload` may hold a shared lock for an instant


class PidFileError(Exception):
    """The pid file cannot be taken; ``str()`` is one line that says why."""


class PidFileBusy(PidFileError):
    """Another running server holds the pid file; ``str()`` says which."""


def parse_pid(text: str) -> int | None:
    """``text`` as the id of one process, else None."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        return None
    pid = int(text)
    return pid if 1 <= pid <= MAX_PID else None


class PidFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd = -1

    def acquire(self) -> None:
        """Lock the file and write this process's id in it. Raises :class:`PidFileError`."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PidFileError(f"flowgate: {self.path}: cannot write the pid file ({exc.strerror})") from None
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                os.close(fd)
                raise PidFileBusy(f"flowgate: {self.path}: another flowgate serve (pid {holder}) runs with this "
                                  "pid_file: stop it first, or give this one another pid_file") from None
            except BaseException:
                os.close(fd)
                raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def forget(self) -> None:
        """In a forked worker: close the inherited descriptor (the lock stays with the supervisor's)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """The server stops: remove the file, then let go of the lock."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.forget()


def read_pid(path: str | os.PathLike[str]) -> int:
    """The pid of the server holding the pid file at ``path``. Raises LookupError (its message
    says why, ready to print) when there is none: no file, not a pid, or nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LookupError(f"flowgate: {path}: no server pid there ({exc.strerror})") from None
    try:
        text = os.read(fd, 64).decode(errors="replace")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            held = False  # (ours for an instant: closing the file lets go of it)
        except BlockingIOError:
            held = True
    finally:
        os.close(fd)
    pid = parse_pid(text)
    if pid is None:
        raise LookupError(f"flowgate: {path}: {text.strip()[:32]!r} is not a process id")
    if not held:
        raise LookupError(f"flowgate: {path}: stale: no flowgate server holds it (pid {pid} is not signalled; "
                          "is the server running?)")
    return pid
