"""The ``flowgate`` command (also ``python -m proxy``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from datetime import UTC, datetime

import yaml

from .config import Config, ConfigError, load_config
from .env import ENV_ACCEPTED, Env

DEFAULT_CONFIG_ENV = "FLOWGATE_CONFIG"


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get(DEFAULT_CONFIG_ENV),
                   help=f"config file (default: ${DEFAULT_CONFIG_ENV})")


def _load(path: str | None) -> Config:
    if not path:
        sys.exit(f"flowgate: no config given: pass --config FILE or set {DEFAULT_CONFIG_ENV}")
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"flowgate: {path}: invalid config:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)


def cmd_serve(args: argparse.Namespace) -> int:
    from .front.serve import install_uvloop, serve_forever
    from .logging import configure_logging

    config = _load(args.config)
    configure_logging(args.log_level)
    loop = install_uvloop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_forever(config))
    finally:
        loop.close()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: invalid config:")
        for line in exc.problems:
            print(f"  {line}")
        return 2
    server = cfg.server
    print(f"{args.file}: ok ({len(cfg.flows)} flows, {len(cfg.keys)} keys, {len(cfg.backends)} backends, "
          f"dialects: {', '.join(f'{n} at {m.prefix}' for n, m in cfg.dialects.items())}; "
          f"listening on {'https' if server.tls else 'http'}://{server.host}:{server.port})")
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    from .policies.api_key import key_entry, new_secret

    envs = None
    if args.env:
        envs = []
        for raw in args.env:
            env = Env.parse(raw)
            if env is None:
                print(f"flowgate: --env {raw!r}: use {ENV_ACCEPTED}", file=sys.stderr)
                return 2
            envs.append(env.value)
    secret = new_secret()
    key_id = args.id or f"key_{args.owner}_{secrets.token_hex(3)}"
    entry = key_entry(secret, key_id, args.owner, args.policy or ["Execute"], args.tenant, args.workspace, envs)
    print(f"# secret (shown once; give it to the client, store it nowhere else):\n# {secret}")
    print("# add under keys: in the config:")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def _with_store(config: Config, fn):
    """Run ``fn(store)`` against the configured store (accounts seeded as the gateway would)."""
    from .errors import StoreUnavailable
    from .store import open_store

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


def _account(config: Config, name: str) -> str:
    if name not in config.accounts:
        sys.exit(f"flowgate: {name!r} is not an account in the config (known: {', '.join(config.accounts)})")
    return name


def _positive_credits(raw: str) -> int:
    """A grant adds credits: a zero or negative amount is refused, never written."""
    try:
        amount = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number of credits") from None
    if amount <= 0:
        raise argparse.ArgumentTypeError(f"a grant must add credits (got {amount}); it cannot remove them")
    return amount


def cmd_credits_grant(args: argparse.Namespace) -> int:
    config = _load(args.config)
    account = _account(config, args.account)
    balance = _with_store(config, lambda store: store.grant(account, args.amount))
    print(f"{account}: granted {args.amount}, balance {balance}")
    return 0


def cmd_credits_show(args: argparse.Namespace) -> int:
    config = _load(args.config)
    account = _account(config, args.account)
    acct = _with_store(config, lambda store: store.get_account(account))
    data = {"balance": acct.balance, "held": acct.held, "spent": acct.spent}
    if args.json:
        print(json.dumps(data))
    else:
        print(f"{account}: balance {acct.balance}, held {acct.held}, spent {acct.spent}, "
              f"available {acct.balance - acct.held}")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    config = _load(args.config)
    account = _account(config, args.account)
    since = _since(args.since) if args.since else None
    entries = _with_store(config, lambda store: store.ledger(account, since=since))
    if args.json:
        print(json.dumps(entries))
        return 0
    for e in entries:
        when = datetime.fromtimestamp(e.get("ended_at") or 0, tz=UTC).isoformat(timespec="seconds")
        print(f"{when}  {e.get('job_id')}  {e.get('flow')}  {e.get('outcome')}  "
              f"out={e.get('output_tokens')} in={e.get('input_tokens')}  credits={e.get('credits')}")
    return 0


def _since(raw: str) -> float:
    """--since as epoch seconds, an ISO date/time, or a duration like 90s, 15m, 24h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if raw[-1:] in units and raw[:-1].isdigit():
        return time.time() - int(raw[:-1]) * units[raw[-1]]
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        sys.exit(f"flowgate: --since {raw!r}: use epoch seconds, an ISO date, or 90s/15m/24h/7d")
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(port=args.port, backend_port=args.backend_port, workdir=args.dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowgate", description="Streaming API gateway for flow runtimes.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    _config_arg(s)
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file; non-zero exit on problems")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser("new", help="generate a key: prints the secret once and its config entry")
    kn.add_argument("--owner", required=True)
    kn.add_argument("--id")
    kn.add_argument("--policy", action="append", choices=["Execute"])
    kn.add_argument("--tenant")
    kn.add_argument("--workspace")
    kn.add_argument("--env", action="append", help=f"scope to an environment ({ENV_ACCEPTED}); repeatable")
    kn.set_defaults(func=cmd_keys_new)

    cr = sub.add_parser("credits", help="account balances")
    crsub = cr.add_subparsers(dest="credits_command", required=True)
    g = crsub.add_parser("grant", help="add N credits to ACCOUNT")
    g.add_argument("account")
    g.add_argument("amount", type=_positive_credits, help="a whole number of credits, > 0")
    _config_arg(g)
    g.set_defaults(func=cmd_credits_grant)
    sh = crsub.add_parser("show", help="balance, held and spent of ACCOUNT")
    sh.add_argument("account")
    sh.add_argument("--json", action="store_true")
    _config_arg(sh)
    sh.set_defaults(func=cmd_credits_show)

    lg = sub.add_parser("ledger", help="settled runs of ACCOUNT, oldest first")
    lg.add_argument("account")
    lg.add_argument("--since", help="epoch seconds, ISO date, or 90s/15m/24h/7d")
    lg.add_argument("--json", action="store_true")
    _config_arg(lg)
    lg.set_defaults(func=cmd_ledger)

    d = sub.add_parser("demo", help="gateway + built-in demo backend + curl lines that work")
    d.add_argument("--port", type=int, default=8080)
    d.add_argument("--backend-port", type=int, default=9001)
    d.add_argument("--dir", default=".flowgate-demo", help="where the demo keeps its config and SQLite store")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BrokenPipeError:  # the reader went away (`flowgate ledger … | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 0


if __name__ == "__main__":
    sys.exit(main())
