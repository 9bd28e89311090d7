"""``flowgate keys``: ``new`` prints a config file entry (the secret once); ``create``, ``list`` and
``revoke`` work on the keys in the store, as the admin API does (every replica honours them within
a second)."""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from datetime import UTC, datetime

import yaml
from pydantic import ValidationError

from ..env import ENV_ACCEPTED, Env
from .common import load, with_store


def _envs(raw: list[str] | None) -> list[str] | None:
    if not raw:
        return None
    envs = []
    for item in raw:
        env = Env.parse(item)
        if env is None or not item:
            sys.exit(f"flowgate: --env {item!r}: use {ENV_ACCEPTED}")
        envs.append(env.value)
    return envs


def cmd_keys_new(args: argparse.Namespace) -> int:
    from ..policies.api_key import key_entry, new_secret

    envs = _envs(args.env)
    secret = new_secret()
    key_id = args.id or f"key_{args.owner}_{secrets.token_hex(3)}"
    entry = key_entry(secret, key_id, args.owner, args.policy or ["Execute"], args.tenant, args.workspace, envs)
    print(f"# secret (shown once; give it to the client, store it nowhere else):\n# {secret}")
    print("# add under keys: in the config:")
    print(yaml.safe_dump([entry], sort_keys=False).rstrip())
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from ..policies.keys import KeyConflict, KeySpec, create_key

    config = load(args.config)
    spec_raw: dict = {"owner": args.owner, "policies": args.policy or ["Execute"]}
    for name in ("id", "tenant", "workspace", "expires_in_s"):
        if getattr(args, name) is not None:
            spec_raw[name] = getattr(args, name)
    if args.env:
        spec_raw["envs"] = _envs(args.env)
    try:
        spec = KeySpec.model_validate(spec_raw)
    except ValidationError as exc:
        sys.exit("flowgate: " + "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        secret, record = with_store(config, lambda store: create_key(config, store, spec))
    except (KeyConflict, LookupError) as exc:
        sys.exit(f"flowgate: {exc.args[0]}")
    if args.json:
        print(json.dumps({"id": record["id"], "secret": secret, "owner": record["owner"],
                          "policies": record["policies"], "expires_at": record["expires_at"]}))
        return 0
    print(f"key {record['id']} (owner {record['owner']}, {', '.join(record['policies'])}"
          + (f", expires {_when(record['expires_at'])}" if record["expires_at"] else "") + ")")
    print(f"secret (shown once; give it to the client, store it nowhere else):\n{secret}")
    return 0


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="seconds") if ts else "-"


def cmd_keys_list(args: argparse.Namespace) -> int:
    from ..policies.keys import all_keys

    config = load(args.config)
    keys = with_store(config, lambda store: all_keys(config, store))
    if args.json:
        print(json.dumps(keys))
        return 0
    for k in keys:
        scope = " ".join(f"{n}={k[n]}" for n in ("tenant", "workspace") if k[n])
        scope += f" envs={','.join(k['envs'])}" if k["envs"] else ""
        state = "EXPIRED" if k["expired"] else (f"expires {_when(k['expires_at'])}" if k["expires_at"] else "")
        print(f"{k['id']}  {k['source']}  {k['owner']}  {','.join(k['policies'])}  {scope}  {state}".rstrip())
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from ..policies.keys import KeyConflict, revoke_key

    config = load(args.config)
    try:
        deleted = with_store(config, lambda store: revoke_key(config, store, args.id))
    except KeyConflict as exc:
        sys.exit(f"flowgate: {exc.args[0]}")
    if not deleted:
        sys.exit(f"flowgate: no key {args.id!r} in the store")
    print(f"revoked {args.id} (every gateway on this store refuses it within a second)")
    return 0


def add_parsers(sub, config_arg) -> None:
    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kn = ksub.add_parser("new", help="generate a key for the config file: prints the secret once and its entry")
    kc = ksub.add_parser("create", help="make a key in the store (no restart): prints the secret once")
    for p in (kn, kc):
        p.add_argument("--owner", required=True)
        p.add_argument("--id")
        p.add_argument("--policy", action="append", choices=["Execute", "Admin"],
                       help="Execute (default) and/or Admin; repeatable")
        p.add_argument("--tenant")
        p.add_argument("--workspace")
        p.add_argument("--env", action="append", help=f"scope to an environment ({ENV_ACCEPTED}); repeatable")
    kn.set_defaults(func=cmd_keys_new)
    kc.add_argument("--expires-in", dest="expires_in_s", type=int, metavar="SECONDS")
    kc.add_argument("--json", action="store_true")
    config_arg(kc)
    kc.set_defaults(func=cmd_keys_create)
    kl = ksub.add_parser("list", help="every key (config file and store), never a secret")
    kl.add_argument("--json", action="store_true")
    config_arg(kl)
    kl.set_defaults(func=cmd_keys_list)
    kr = ksub.add_parser("revoke", help="delete a key made in the store")
    kr.add_argument("id")
    config_arg(kr)
    kr.set_defaults(func=cmd_keys_revoke)
