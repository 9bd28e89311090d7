"""What every command of the CLI shares: the ``--config`` argument, loading a config with its
problems printed (no traceback), and running one function against the configured store."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..config import Config, ConfigError, load_config

DEFAULT_CONFIG_ENV = "FLOWGATE_CONFIG"


def config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get(DEFAULT_CONFIG_ENV),
                   help=f"config file (default: ${DEFAULT_CONFIG_ENV})")


def load(path: str | None) -> Config:
    if not path:
        sys.exit(f"flowgate: no config given: pass --config FILE or set {DEFAULT_CONFIG_ENV}")
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"flowgate: {path}: invalid config:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)


def with_store(config: Config, fn):
    """Run ``fn(store)`` against the configured store (accounts seeded as the gateway would)."""
    from ..errors import StoreUnavailable
    from ..logging import configure_logging
    from ..store import open_store

    configure_logging("warning")  # warnings (a store unreachable) on stderr; stdout is the command's output

    async def go():
        store = open_store(config.store)
        await store.start()
        try:
            for account, acct in config.accounts.items():
                await store.seed_account(account, acct.initial_credits)
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except StoreUnavailable as exc:
        sys.exit(f"flowgate: the store is unavailable: {exc.detail}")


def account(config: Config, name: str) -> str:
    if name not in config.accounts:
        sys.exit(f"flowgate: {name!r} is not an account in the config (known: {', '.join(config.accounts)})")
    return name
