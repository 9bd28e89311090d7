"""A flow environment (Development, Test, Production) and how clients may name it.

A leaf: the config, the dialects, the run and the CLI all read it, and it imports nothing of theirs.
"""

from __future__ import annotations

from enum import StrEnum


class Env(StrEnum):
    """A flow environment. Clients may say the name (any case) or 0/1/2."""

    Development = "Development"
    Test = "Test"
    Production = "Production"

    @classmethod
    def parse(cls, value: str | None) -> Env | None:
        """The env for a query value, ``Production`` for no value, ``None`` for anything invalid."""
        if value is None or value == "":
            return cls.Production
        return _ENV_ALIASES.get(value.strip().lower())


_ENV_ALIASES = {
    "development": Env.Development, "0": Env.Development,
    "test": Env.Test, "1": Env.Test,
    "production": Env.Production, "2": Env.Production,
}
ENV_ACCEPTED = "Development, Test, Production, 0, 1 or 2"
