"""What field validation cannot see: references between sections (flow -> backend, owner ->
account, caps, duplicate ids and secrets, dialect mounts), and ``${VAR}`` / ``${VAR:-default}``
interpolation in string values. Both work on the raw mapping and name the key of each problem."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError

from ..dialects.routes import mount_collisions
from .model import DEFAULT_DIALECTS, MAX_DURATION_CAP_S, DialectMount
from .server import MAX_WORKERS


def _d(node: Any) -> dict:
    return node if isinstance(node, dict) else {}


def _l(node: Any) -> list:
    return node if isinstance(node, list) else []


def cross_ref_problems(raw: dict) -> list[str]:
    """Problems between sections (flow -> backend, owner -> account, caps, ids, mounts), found on
    the raw mapping so that they are reported together with field errors in one pass."""
    problems: list[str] = []
    backends, accounts = _d(raw.get("backends")), _d(raw.get("accounts"))
    cap = _d(raw.get("limits")).get("max_duration_s", MAX_DURATION_CAP_S)
    cap = cap if isinstance(cap, int | float) else MAX_DURATION_CAP_S
    ids: set[str] = set()
    names: dict[str, str] = {}
    for i, flow in enumerate(_l(raw.get("flows"))):
        flow = _d(flow)
        fid = flow.get("id", i)
        where = f"flows[{fid}]"
        if fid in ids:
            problems.append(f"{where}.id: duplicate flow id")
        ids.add(fid)
        name = flow.get("name")
        if isinstance(name, str):
            if name in names and names[name] != fid:
                problems.append(f"{where}.name: {name!r} is also the name of flow {names[name]}")
            names.setdefault(name, fid)
        owner = flow.get("owner")
        if isinstance(owner, str) and owner not in accounts:
            problems.append(f"{where}.owner: {owner!r} is not an account (declare it under accounts)")
        own_cap = flow.get("max_duration_s")
        if isinstance(own_cap, int | float) and own_cap > cap:
            problems.append(f"{where}.max_duration_s: {own_cap:g} is above limits.max_duration_s ({cap:g})")
        for env, target in _d(flow.get("targets")).items():
            backend = _d(target).get("backend")
            if isinstance(backend, str) and backend not in backends:
                known = ", ".join(sorted(backends)) or "none"
                problems.append(f"{where}.targets.{env}.backend: {backend!r} is not a backend (known: {known})")
    key_ids: set[str] = set()
    hashes: dict[str, str] = {}
    for i, key in enumerate(_l(raw.get("keys"))):
        key = _d(key)
        kid = key.get("id", i)
        where = f"keys[{kid}]"
        if kid in key_ids:
            problems.append(f"{where}.id: duplicate key id")
        key_ids.add(kid)
        owner = key.get("owner")
        if isinstance(owner, str) and owner not in accounts:
            problems.append(f"{where}.owner: {owner!r} is not an account (declare it under accounts)")
        digest = key.get("sha256")
        if isinstance(digest, str):
            digest = digest.strip().lower()
            if digest in hashes:
                problems.append(f"{where}.sha256: same secret as key {hashes[digest]}")
            hashes.setdefault(digest, kid)
    dialects = raw.get("dialects")
    if isinstance(dialects, dict):
        if not dialects:
            problems.append("dialects: mount at least one dialect")
        mounts = {}
        for name, mount in dialects.items():
            try:
                mounts[name] = DialectMount.model_validate(mount or {})
            except ValidationError:
                continue  # reported by field validation
        problems.extend(mount_collisions({n: mt.prefix for n, mt in mounts.items() if n in DEFAULT_DIALECTS}))
    store, workers = raw.get("store"), _d(raw.get("server")).get("workers")
    if (isinstance(store, str) and store.startswith("memory:") and isinstance(workers, int)
            and not isinstance(workers, bool) and 1 < workers <= MAX_WORKERS):  # (else a field error)
        problems.append(f"server.workers: {workers} with store memory://, which lives in one process (each worker "
                        "would keep its own credits, tokens and rate limits): use a shared store, or workers: 1")
    return problems



_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def sub(m: re.Match[str]) -> str:
            value = os.environ.get(m.group(1))
            if m.group(2) is not None and not value:  # as the shell's ${VAR:-default}: unset or empty
                return m.group(2)
            if value is None:
                problems.append(f"{path}: environment variable {m.group(1)} is not set")
                return ""
            return value

        return _ENV_REF.sub(sub, node)
    return node
