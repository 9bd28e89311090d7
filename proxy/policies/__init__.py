"""Policies: small classes with the hooks a run passes through, in one literal, ordered chain.

Hooks (implement only those you need; the handler calls only overridden ones):

- ``async on_request(run)``: before anything reaches the backend. Reject by raising a typed
  :mod:`proxy.errors` exception; the dialect renders it. Headers are not sent yet.
- ``on_event(run, event)``: once per decoded backend event, on the hot path. Return ``None``, or an
  awaitable when you need I/O (e.g. growing a credit hold); the pump awaits it before writing on.
  Raise :class:`StopRun` to end the stream (the pump renders the format's error event or aborts).
- ``quiet(run)``: the companion of ``on_event`` for the compiled text path (:mod:`proxy.stream.textpath`):
  ``(max_chars, until)`` such that ``on_event`` would do nothing for a text event while
  ``run.meter.chars <= max_chars`` (None: no such limit) and ``time.monotonic() < until``. Chunks
  inside both limits skip the hooks; the first past either calls them, then ``quiet`` again. A
  chain with an ``on_event`` policy that does not implement it streams every chunk in Python.
- ``async on_complete(run)``: exactly once after the run ended (``run.outcome`` is set), also when
  the client went away; only for policies whose ``on_request`` returned normally.

``build_chain`` (:mod:`proxy.policies.chain`) is the single place the order is decided; its order is the
execution order. The base class is in :mod:`proxy.policies.base`.
"""

from __future__ import annotations

from .base import Policy, StopRun
from .chain import Chain, build_chain, build_chains

__all__ = ["Chain", "Policy", "StopRun", "build_chain", "build_chains"]
