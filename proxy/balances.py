"""``flowgate_account_balance_credits{account}``: each configured account's balance, as the store has it.

Labels come from the config's accounts only (a bounded set). A settlement marks its account; a
background loop reads the marked accounts once a second and every account every
``REFRESH_ALL_S``, so the gauge follows spending closely without a store read per run, and shows
grants made elsewhere (the CLI, another replica) within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog

from . import metrics as m
from .errors import StoreUnavailable

TICK_S = 1.0
REFRESH_ALL_S = 5.0

log = structlog.get_logger("flowgate.balances")


class Balances:
    def __init__(self, store, accounts: Mapping[str, int]) -> None:
        self.store = store
        self.initial = dict(accounts)  # account -> initial credits (a missing account reads as this)
        self.dirty: set[str] = set()

    def changed(self, account: str) -> None:
        """A settlement moved ``account``'s balance: read it again on the next tick."""
        if account in self.initial:
            self.dirty.add(account)

    async def refresh(self, accounts) -> None:
        for account in accounts:
            acct = await self.store.get_account(account, initial=self.initial[account])
            m.child(m.ACCOUNT_BALANCE, account).set(acct.balance)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_all = loop.time()
        while True:
            try:
                if loop.time() >= next_all:
                    next_all = loop.time() + REFRESH_ALL_S
                    self.dirty.clear()
                    await self.refresh(list(self.initial))
                elif self.dirty:
                    dirty, self.dirty = self.dirty, set()
                    await self.refresh(dirty)
            except StoreUnavailable:
                pass  # the store's own metrics and /readyz say so; retried next tick
            except Exception:
                log.exception("balance_refresh_failed")
            await asyncio.sleep(TICK_S)

    @contextlib.asynccontextmanager
    async def running(self):
        task = asyncio.create_task(self.run_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
