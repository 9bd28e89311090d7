"""What a ``store:`` URL says, checked without connecting (the config checks it at load) and
without importing any driver."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlsplit, urlunsplit


def check_store_url(url: str) -> str:
    """The URL's scheme, or ValueError naming what is wrong with it (the config checks it at load)."""
    scheme = urlparse(url).scheme
    if url.startswith("memory://"):
        return "memory"
    if scheme == "sqlite":
        if not url[len("sqlite:///"):] or not url.startswith("sqlite:///"):
            raise ValueError("sqlite store URL needs a path: sqlite:///relative.db or sqlite:////abs.db")
        return scheme
    _check_userinfo(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        parse_seeds(url.split("?", 1)[0])
        prefix = dict(parse_qsl(urlsplit(url).query)).get("prefix", "fg")
        if "{" in prefix or "}" in prefix:  # a tag of its own would move (or split) every script's slot
            raise ValueError("redis+cluster:// prefix must not contain { or } (the store's keys carry hash tags)")
    elif scheme in ("postgresql", "postgres"):
        parse_pg_url(url)
    elif scheme not in ("redis", "rediss"):
        raise ValueError("must be sqlite:///path, redis://host:port/db, redis+cluster://host:port[,host:port...], "
                         "postgresql://user:password@host:port/db or memory://")
    return scheme


SCHEMES = ("redis+cluster", "rediss+cluster")


def _check_userinfo(url: str) -> None:
    """A password with an unencoded ``/``, ``?`` or ``#`` ends the host part early: the URL would
    name another host, or pass part of the password on as a database name, a driver parameter or
    an error message. Refused without quoting any of it."""
    parts = urlsplit(url)
    cut = "@" not in parts.netloc and (
        "@" in parts.path or any("@" in name for name, _ in parse_qsl(parts.query, keep_blank_values=True)))
    if "#" in url or cut:
        raise ValueError("the user:password part of the store URL has a /, ? or # that must be "
                         "percent-encoded (%2F, %3F, %23; @ is %40)")


def parse_seeds(url: str) -> tuple[list[tuple[str, int]], dict]:
    """(seed nodes, client options) of a ``redis+cluster://`` URL; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError("a Redis Cluster URL starts with redis+cluster://")
    _check_userinfo(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"redis+cluster:// seed {item!r} is not host:port")
        seeds.append((host, int(port)))
    if parts.path not in ("", "/", "/0"):
        raise ValueError("a Redis Cluster has only database 0: drop the /db from the URL")
    options: dict = {"ssl": parts.scheme == "rediss+cluster"}
    if userinfo:
        user, _, password = userinfo.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) or None
    return seeds, options


SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # PostgreSQL names are at most 63 bytes


def parse_pg_url(url: str) -> tuple[str, str]:
    """(the DSN for the driver, the schema name) of a ``postgresql://`` store URL."""
    _check_userinfo(url)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = "flowgate"
    rest = []
    for name, value in query:
        if name == "schema":
            schema = value
        else:
            rest.append((name, value))
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"postgresql store: schema {schema!r} must be lower-case letters, digits and _ "
                         "(at most 63)")
    if schema.startswith("pg_") or schema == "information_schema":  # PostgreSQL's own schemas
        raise ValueError(f"postgresql store: schema {schema!r} is reserved by PostgreSQL")
    if not parts.hostname and "host" not in dict(rest):
        raise ValueError("postgresql store URL needs a host: postgresql://user:password@host:5432/db")
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(rest))), schema
