"""``flowgate credits grant|show`` and ``flowgate ledger``: account figures in the configured store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime

from ..store.base import instant
from .common import account, load, with_store


def positive_credits(raw: str) -> int:
    """A grant adds credits: a zero or negative amount is refused, never written."""
    try:
        amount = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of credits") from None
    if amount <= 0:
        raise argparse.ArgumentTypeError(f"a grant must add credits (got {amount}); it cannot remove them")
    return amount


def cmd_credits_grant(args: argparse.Namespace) -> int:
    config = load(args.config)
    name = account(config, args.account)
    balance = with_store(config, lambda store: store.grant(name, args.amount))
    print(f"{name}: granted {args.amount}, balance {balance}")
    return 0


def cmd_credits_show(args: argparse.Namespace) -> int:
    config = load(args.config)
    name = account(config, args.account)
    acct = with_store(config, lambda store: store.get_account(name))
    data = {"balance": acct.balance, "held": acct.held, "spent": acct.spent}
    if args.json:
        print(json.dumps(data))
    else:
        print(f"{name}: balance {acct.balance}, held {acct.held}, spent {acct.spent}, "
              f"available {acct.balance - acct.held}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    config = load(args.config)
    name = account(config, args.account)
    since = parse_since(args.since) if args.since else None
    entries = with_store(config, lambda store: store.ledger(name, since=since))
    if args.json:
        print(json.dumps(entries))
        return 0
    for e in entries:
        when = datetime.fromtimestamp(e.get("ended_at") or 0, tz=UTC).isoformat(timespec="seconds")
        print(f"{when}  {e.get('job_id')}  {e.get('flow')}  {e.get('outcome')}  "
              f"out={e.get('output_tokens')} in={e.get('input_tokens')}  credits={e.get('credits')}")
    return 0


def parse_since(raw: str) -> float:
    """--since as epoch seconds, an ISO date/time, or a duration like 90s, 15m, 24h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if raw[-1:] in units and raw[:-1].isdigit():
        return time.time() - int(raw[:-1]) * units[raw[-1]]
    value = instant(raw)
    if value is None:
        sys.exit(f"flowgate: --since {raw!r}: use epoch seconds, an ISO date, or 90s/15m/24h/7d")
    return value
