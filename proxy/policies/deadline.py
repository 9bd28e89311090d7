"""The hard cap on run time: ``flow.max_duration_s`` (never above ``limits.max_duration_s``)."""

from __future__ import annotations

import asyncio

from ..run import Run
from .base import Policy


class Deadline(Policy):
    """Sets ``run.deadline`` (event-loop time); the handler cuts the run there, wherever it is."""

    name = "deadline"

    async def on_request(self, run: Run) -> None:
        assert run.flow is not None
        run.deadline = asyncio.get_running_loop().time() + self.config.run_cap_s(run.flow)
