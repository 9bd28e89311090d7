"""Reading a config: YAML in, interpolated and validated, every problem reported at once as a line
that names its key (``flows[wf_abc].targets.Production.backend: ...``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .model import Config
from .validation import cross_ref_problems, interpolate


class ConfigError(Exception):
    """The config cannot be served. ``problems`` is one line per problem, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def report(self, path: str | os.PathLike[str]) -> str:
        """What ``flowgate check-config`` prints (and a refused reload logs): the file, then each problem."""
        return "\n".join([f"{path}: invalid config:", *(f"  {line}" for line in self.problems)])


def _loc(loc: tuple[Any, ...], raw: Any) -> str:
    """A pydantic error location as a key path, naming list entries by their id where they have one."""
    out: list[str] = []
    node = raw
    for part in loc:
        if isinstance(part, int):
            ident = node[part].get("id") if isinstance(node, list) and part < len(node) and isinstance(
                node[part], dict) else None
            out[-1] = f"{out[-1]}[{ident if ident is not None else part}]" if out else f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out) or "(top level)"


def parse_config(raw: Any) -> Config:
    """Validate an already-parsed mapping (after interpolation). Raises :class:`ConfigError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): the config must be a mapping"])
    problems: list[str] = []
    raw = interpolate(raw, "", problems)
    if problems:
        raise ConfigError(problems)
    refs = cross_ref_problems(raw)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            loc = _loc(tuple(err["loc"]), raw)
            if err["type"] == "value_error" and not err["loc"]:
                problems.extend(msg.splitlines())
            else:
                problems.append(f"{loc}: {msg}")
        raise ConfigError(problems + refs) from None
    if refs:
        raise ConfigError(refs)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, interpolate and validate a YAML config file. Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ConfigError([f"{p}: not valid YAML{where}: {what}" + (f" ({context})" if context else "")]) from None
    if raw is None:
        raise ConfigError([f"{p}: the file is empty (or only comments): there is nothing to serve; "
                           "start from config/flowgate.example.yaml"])
    return parse_config(raw)
