"""One run: what a dialect parsed from the request, what policies resolved, and how it ended.

A dialect fills the "request" half; policies fill the "resolved" half (key, flow, target; the handler sets the deadline)
and may read ``meter`` for what has been generated so far; the handler sets ``outcome``.
The raw credential lives only here, on the run, and is never logged, labelled or forwarded.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .protocols.events import Event, Item, Token, Usage, item_text

if TYPE_CHECKING:
    from .config import BackendConfig, FlowConfig, KeyConfig, TargetConfig
    from .env import Env

# Outcomes of an admitted run (bounded: used as a metric label).
COMPLETED = "completed"
CLIENT_DISCONNECTED = "client_disconnected"
DEADLINE = "deadline"
BACKEND_ERROR = "backend_error"
CREDITS_CUT = "credits_cut"
# every way an admitted run ends: the metrics make each one's series (add a new outcome here)
OUTCOMES = (COMPLETED, CLIENT_DISCONNECTED, DEADLINE, BACKEND_ERROR, CREDITS_CUT)
REJECTED = "rejected"  # a run refused before anything reached a backend (counted as a rejection, by reason)


_rng = random.Random(os.urandom(32))
# a forked worker must not replay its parent's sequence: two workers would mint the same job ids
# (and settle two runs as one). (random's own global instance is reseeded the same way.)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # ULID's alphabet
_PAIRS = [_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024)]  # 10 bits -> 2 characters
_SHIFTS = tuple(range(120, -10, -10))  # 130 bits (2 zero bits above the 128) as 13 pairs


def new_job_id() -> str:
    """A ULID (48 bits of milliseconds, 80 random bits, Crockford base32). Job ids must be unique,
    not secret (reading a job needs the owner's key), so the random part comes from a PRNG seeded
    once from the OS rather than a syscall per run. Encoded here ten bits at a time: the python-ulid
    object it was made with cost 2.6 µs per run, this 1.1 (tests/test_run.py checks both agree)."""
    n = (time.time_ns() // 1_000_000) << 80 | _rng.getrandbits(80)
    return "".join([_PAIRS[(n >> shift) & 1023] for shift in _SHIFTS])


MAX_TOKENS = 2**53 - 1  # the most tokens a meter counts (a backend's usage report is clamped to it)


@dataclass(slots=True)
class Meter:
    """What the run generated, as the decoder saw it (metering reads and fills this)."""

    chars: int = 0
    reported_input: int | None = None
    reported_output: int | None = None

    @property
    def output_tokens(self) -> int:
        """Backend-reported output tokens where given, else ceil(characters / 4)."""
        if self.reported_output is not None:
            return self.reported_output
        return (self.chars + 3) // 4

    @property
    def input_tokens(self) -> int:
        return self.reported_input or 0

    def observe(self, ev: Event) -> None:
        """Meter one event: count generated characters, keep the backend's reported usage (clamped
        to what every store holds exactly)."""
        t = type(ev)
        if t is Token:
            self.chars += len(ev.text)  # type: ignore[union-attr]
        elif t is Usage:
            if ev.output is not None:  # type: ignore[union-attr]
                self.reported_output = min(max(self.reported_output or 0, ev.output), MAX_TOKENS)  # type: ignore[union-attr]
            if ev.input is not None:  # type: ignore[union-attr]
                self.reported_input = min(max(self.reported_input or 0, ev.input), MAX_TOKENS)  # type: ignore[union-attr]
        elif t is Item:
            text = item_text(ev.obj)  # type: ignore[union-attr]
            if text:
                self.chars += len(text)


@dataclass(slots=True)
class Run:
    # --- parsed by the dialect ---
    request: web.Request
    dialect: str
    route: str
    flow_ref: str
    env: Env
    stream: bool
    body: bytes
    credential: str | None = field(default=None, repr=False)
    credential_kind: str = "key"  # "key" | "token"
    tenant: str | None = None  # profitbase addressing from the URL
    workspace: str | None = None
    by_name: bool = False  # langflow accepts a flow name too
    output: str | None = None  # the streaming output format the request chose (None: the dialect's own)
    body_type: str | None = None  # the Content-Type of a body the gateway rewrote for the backend
    # --- resolved by policies ---
    key: KeyConfig | None = None
    key_id: str | None = None
    owner: str | None = None
    bound_flow: str | None = None  # a stream token bound to one flow
    flow: FlowConfig | None = None
    target: TargetConfig | None = None
    backend: BackendConfig | None = None
    deadline: float = 0.0  # event-loop time at which the run is cut
    # --- filled while running ---
    _job_id: str = field(default_factory=new_job_id, repr=False)
    backend_job_id: str | None = None  # the backend's own job id, if it sent one: recorded, never a key
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    forwarded_mono: float = 0.0  # when the backend request was sent
    meter: Meter = field(default_factory=Meter)
    status: int = 0
    outcome: str | None = None
    reason: str | None = None  # why it was rejected / how it failed (bounded set)
    bytes_in: int = 0
    bytes_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # per-policy state, keyed by policy name
    response_headers: dict[str, str] = field(default_factory=dict)  # set before prepare() only

    @property
    def job_id(self) -> str:
        """The run's one identity, made at admission: it keys holds, checkpoints, settlement, the
        ledger, job records, rate-limit slots and logs, and is the ``flow-job-id`` header. Read-only:
        nothing may rename a run (a backend's own id goes to ``backend_job_id``)."""
        return self._job_id

    @property
    def flow_id(self) -> str | None:
        return self.flow.id if self.flow else None


RUN = web.RequestKey("run", Run)  # the run a request started (the access line reads it)
