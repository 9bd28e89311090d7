"""The ``flowgate`` command (also ``python -m proxy``): the parser, and ``main``.

The verbs live beside it: :mod:`.serve` (serve, check-config, healthcheck, demo), :mod:`.keys`
(keys new/create/list/revoke), :mod:`.credits` (credits grant/show, ledger); :mod:`.common` holds
what they share. Each imports what it needs when it runs, so ``--help`` and light commands stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from . import credits, keys, serve
from .common import config_arg


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowgate", description="Streaming API gateway for flow runtimes.")
    p.add_argument("--version", action="version", version=f"flowgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve.add_parsers(sub, config_arg)
    keys.add_parsers(sub, config_arg)

    cr = sub.add_parser("credits", help="account balances")
    crsub = cr.add_subparsers(dest="credits_command", required=True)
    g = crsub.add_parser("grant", help="add N credits to ACCOUNT")
    g.add_argument("account")
    g.add_argument("amount", type=credits.positive_credits, help="a whole number of credits, > 0")
    config_arg(g)
    g.set_defaults(func=credits.cmd_credits_grant)
    sh = crsub.add_parser("show", help="balance, held and spent of ACCOUNT")
    sh.add_argument("account")
    sh.add_argument("--json", action="store_true")
    config_arg(sh)
    sh.set_defaults(func=credits.cmd_credits_show)

    lg = sub.add_parser("ledger", help="settled runs of ACCOUNT, oldest first")
    lg.add_argument("account")
    lg.add_argument("--since", help="epoch seconds, ISO date, or 90s/15m/24h/7d")
    lg.add_argument("--json", action="store_true")
    config_arg(lg)
    lg.set_defaults(func=credits.cmd_ledger)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # the reader went away (`flowgate ledger … | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
