"""Reload: a running server takes a new config file (SIGHUP, or ``flowgate reload``) without a restart.

Two steps, kept apart so that the supervisor can do the first once for all its workers:

- :func:`prepare` reads and validates the file against the config in force. An invalid file
  changes nothing: :func:`refused` writes one log line carrying the very text ``flowgate
  check-config`` prints. A valid one gives a :class:`Plan`: the config to swap to, and the keys
  that changed but only apply at the next restart (:data:`RESTART_ONLY`: the listeners, the
  worker count, the store, the dialect mounts, every other ``server`` option), named in one log
  line; in the plan's config those sections stay as they run now.
- :func:`apply` lands the plan in one worker's :class:`~proxy.context.Gateway`: accounts new to
  the config are seeded (set-if-absent, as at start), the chains are built from the new config,
  and :meth:`~proxy.context.Gateway.swap` puts them in force for new requests. Runs already open
  keep the chain they started with (:func:`proxy.api.runs.handle_run` takes it once).

What reloads: keys, flows, backends, accounts, limits, CORS, rate limits. A later step that loads
something beside the config (certificates, say) adds its check to :func:`prepare` (so a bad one
refuses the whole reload) and its swap to :func:`apply`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from .. import metrics as m
from ..config import Config, ConfigError, load_config
from ..errors import StoreUnavailable
from ..policies import build_chains
from ..policies.hold_size import HoldSizer
from ..policies.keys import KeyRing

if TYPE_CHECKING:
    from ..context import Gateway

log = structlog.get_logger("flowgate.reload")

RESTART_ONLY = ("server", "store", "dialects")


@dataclass(frozen=True)
class Plan:
    config: Config  # what the workers swap to (RESTART_ONLY sections as they run now)
    pending_restart: list[str] = field(default_factory=list)  # changed keys applied at the next restart


def invalid_text(path: str | os.PathLike[str], exc: ConfigError) -> str:
    """What ``flowgate check-config`` prints for an invalid file."""
    return exc.report(path)


def restart_only_changes(running: Config, new: Config) -> list[str]:
    changed = [f"server.{name}" for name in type(running.server).model_fields
               if getattr(running.server, name) != getattr(new.server, name)]
    return changed + [name for name in RESTART_ONLY[1:] if getattr(running, name) != getattr(new, name)]


def prepare(path: str | os.PathLike[str], running: Config) -> Plan:
    """The file at ``path`` validated, as the running server would swap to it. Raises ConfigError."""
    new = load_config(path)
    pending = restart_only_changes(running, new)
    if pending:
        new = new.model_copy(update={name: getattr(running, name) for name in RESTART_ONLY})
    return Plan(new, pending)


def prepared(path: str | os.PathLike[str], running: Config) -> Plan | None:
    """:func:`prepare`, its outcome logged (once) and counted; None when the file is refused."""
    try:
        plan = prepare(path, running)
    except ConfigError as exc:
        m.child(m.RELOADS, "refused").inc()
        log.error("reload_refused", config=str(path), error=invalid_text(path, exc))
        return None
    m.child(m.RELOADS, "applied").inc()
    if plan.pending_restart:
        log.warning("reload_pending_restart", config=str(path), keys=plan.pending_restart,
                    detail="these changed but apply at the next restart; the rest is applied now")
    log.info("reloaded", config=str(path), flows=len(plan.config.flows), keys=len(plan.config.keys),
             backends=len(plan.config.backends), accounts=len(plan.config.accounts))
    return plan


async def apply(gw: Gateway, config: Config) -> None:
    """Put ``config`` in force in this worker: new requests use it, open runs finish under theirs.

    Everything is built before anything changes; the changes themselves run without an await in
    between, so no request sees half of them."""
    running = gw.config
    sizer = gw.hold_sizer
    if sizer is None or config.limits != running.limits:
        sizer = HoldSizer(gw.store, config.limits)
    keys = KeyRing(config, gw.store)  # config keys as reloaded; the store's are read again on first use
    chains = build_chains(config, gw.store, keys, sizer, gw.balances, gw.checkpoints)
    for account, acct in config.accounts.items():
        if account not in running.accounts:
            with contextlib.suppress(StoreUnavailable):  # else seeded at the next start (runs fail closed)
                await gw.store.seed_account(account, acct.initial_credits)
    if gw.balances is not None:
        gw.balances.initial = {name: acct.initial_credits for name, acct in config.accounts.items()}
    for account in set(running.accounts) - set(config.accounts):
        m.forget(m.ACCOUNT_BALANCE, account)  # the gauge shows configured accounts only
    m.init_series([f.id for f in config.flows], list(config.dialects), list(config.backends))
    gw.swap(config, chains, sizer, keys)


# --- between the supervisor and its workers --------------------------------------------------------

HANDOFF = "config.pickle"


def hand_over(directory: Path, generation: int, config: Config) -> None:
    """The supervisor leaves the validated config (its ``generation``-th) where its workers read it
    on SIGHUP (the directory is the supervisor's own, mode 0700; the pickle is written by it alone)."""
    tmp = directory / f".{HANDOFF}.tmp"
    tmp.write_bytes(pickle.dumps((generation, config)))
    os.replace(tmp, directory / HANDOFF)


def taken_over(directory: Path) -> tuple[int, Config] | None:
    try:
        return pickle.loads((directory / HANDOFF).read_bytes())  # noqa: S301 - our own supervisor's file
    except FileNotFoundError:
        return None


def send(config_path: str, pid: int | None) -> int:
    """``flowgate reload``: validate the file here first (an invalid one is printed as check-config
    prints it, and nothing is sent), then SIGHUP the server (``--pid``, else the one holding
    ``server.pid_file``: a stale file is refused, see :mod:`.pidfile`)."""
    import signal
    import sys

    from .pidfile import parse_pid, read_pid

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(invalid_text(config_path, exc), file=sys.stderr)
        return 2
    if pid is None:
        if not config.server.pid_file:
            print("flowgate: no server to signal: pass --pid, or set server.pid_file (serve writes it)",
                  file=sys.stderr)
            return 2
        try:
            pid = read_pid(config.server.pid_file)
        except LookupError as exc:
            print(exc, file=sys.stderr)
            return 1
    elif parse_pid(str(pid)) is None:  # 0 or negative: a process group, or every process
        print(f"flowgate: --pid {pid} is not a process id", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"flowgate: no process {pid} (is the server running?)", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"flowgate: not allowed to signal process {pid} (run this as the server's user)", file=sys.stderr)
        return 1
    print(f"flowgate: sent SIGHUP to {pid}: it reloads {config_path} (its log says what changed)")
    return 0
