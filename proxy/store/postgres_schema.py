"""The PostgreSQL store's tables, created and migrated by the gateway at start.

Everything lives in one PostgreSQL schema (``flowgate`` unless the URL says ``?schema=name``), so
an operator reads it with plain SQL, e.g. what each account was charged today::

    SELECT account, sum(credits) FROM flowgate.ledger
    WHERE ended >= date_trunc('day', now()) GROUP BY account;

Versioned: ``schema_version`` holds the version applied; :data:`MIGRATIONS` are applied in order,
in one transaction that also records them, under an advisory lock so that replicas starting
together migrate once. A database newer than this gateway is refused (never written to).
"""

from __future__ import annotations

# the advisory-lock key namespace of migrations (any constant; per-account locks hash their names)
MIGRATION_LOCK = 0x666C6F77  # "flow"

# MIGRATIONS[i] takes the schema from version i to i + 1. Amounts are bigint, times are epoch
# seconds (double precision, as the other stores keep them) with a timestamptz beside them for SQL.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE tokens (hash text PRIMARY KEY, record jsonb NOT NULL, expires_at double precision NOT NULL,
                         used boolean NOT NULL DEFAULT false);
    CREATE INDEX tokens_expiry ON tokens (expires_at);
    CREATE TABLE windows (bucket text PRIMARY KEY, start double precision NOT NULL, count integer NOT NULL);
    CREATE TABLE slots (bucket text NOT NULL, job_id text NOT NULL, expires_at double precision NOT NULL,
                        PRIMARY KEY (bucket, job_id));
    CREATE TABLE accounts (account text PRIMARY KEY, balance bigint NOT NULL, held bigint NOT NULL DEFAULT 0,
                           spent bigint NOT NULL DEFAULT 0);
    CREATE TABLE holds (job_id text PRIMARY KEY, account text NOT NULL, amount bigint NOT NULL,
                        metered bigint NOT NULL DEFAULT 0, input_tokens bigint NOT NULL DEFAULT 0,
                        output_tokens bigint NOT NULL DEFAULT 0, expires_at double precision NOT NULL,
                        meta jsonb NOT NULL);
    CREATE INDEX holds_expiry ON holds (account, expires_at);
    CREATE TABLE ledger (seq bigint GENERATED ALWAYS AS IDENTITY, job_id text PRIMARY KEY,
                         account text NOT NULL, credits bigint NOT NULL, outcome text, flow text,
                         ended_at double precision NOT NULL,
                         ended timestamptz GENERATED ALWAYS AS (to_timestamp(ended_at)) STORED,
                         entry jsonb NOT NULL);
    CREATE INDEX ledger_account ON ledger (account, ended_at, seq);
    CREATE TABLE usage (account text NOT NULL, flow text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY,
                        output_tokens bigint NOT NULL, PRIMARY KEY (account, flow, seq));
    """,
    # 2: keys made through the admin API (the secret's SHA-256, never the secret) and the counter
    # that every change of them moves (replicas re-read the keys when it moved)
    """
    CREATE TABLE api_keys (id text PRIMARY KEY, sha256 text NOT NULL UNIQUE,
                           seq bigint GENERATED ALWAYS AS IDENTITY, record jsonb NOT NULL);
    CREATE TABLE counters (name text PRIMARY KEY, value bigint NOT NULL);
    """,
]

def quoted(schema: str) -> str:
    """The schema as a quoted identifier (checked at load: lower-case letters, digits and _), so
    that a name PostgreSQL reserves as a keyword (``user``, ``order``) works as any other."""
    return f'"{schema}"'


async def migrate(conn, schema: str) -> int:
    """Bring ``schema`` to the newest version (one transaction); returns the version."""
    name = quoted(schema)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        # made only when missing: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
        # database even when the schema exists (a DBA may have made it for a role without it)
        if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
            await conn.execute(f"CREATE SCHEMA {name}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {name}.schema_version (version integer NOT NULL)")
        current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {name}.schema_version")
        if current > len(MIGRATIONS):
            raise SchemaTooNew(f"the database schema {schema!r} is at version {current}, newer than this "
                               f"flowgate knows ({len(MIGRATIONS)}): upgrade flowgate")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            await conn.execute(f"SET LOCAL search_path TO {name}")
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute(f"INSERT INTO {name}.schema_version (version) VALUES ($1)", version)
        return len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer flowgate: this one refuses to start against it."""
