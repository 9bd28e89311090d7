"""Dialects: the public API shapes flowgate serves.

A dialect maps an HTTP request to a :class:`~proxy.run.Run` (flow ref, credential, env, body) and
renders errors and non-streaming results in its own body style. It knows nothing about policies:
it only *parses*, rejecting malformed input with :class:`~proxy.errors.BadRequest` or
:class:`~proxy.errors.PayloadTooLarge` before any state is touched.

To add a dialect: subclass :class:`Dialect`, list its routes in ``routes.ROUTES`` (the collision
check and the router both read it), and register the class in ``DIALECTS``.
"""

from __future__ import annotations

from .base import Collected, Dialect, defer_continue
from .langflow import LangflowDialect
from .profitbase import ProfitbaseDialect
from .routes import ROUTES
from .workflow import WorkflowDialect

__all__ = ["ROUTES", "Collected", "Dialect", "defer_continue", "dialect_classes"]


def dialect_classes() -> dict[str, type[Dialect]]:
    return {d.name: d for d in (ProfitbaseDialect, WorkflowDialect, LangflowDialect)}
