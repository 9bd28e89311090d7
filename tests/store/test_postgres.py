"""PostgreSQL specifics: the schema is created and migrated at start (once, by replicas starting
together), a newer schema is refused, the ledger is a table an operator queries with the README's
SQL, and careless operators get a clear refusal."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.errors import StoreUnavailable
from proxy.store import open_store
from proxy.store.postgres_schema import MIGRATIONS, SchemaTooNew
from tests.backends import postgres_execute
from tests.backends import store_url as backend_url


@pytest.fixture
def pg_url(tmp_path):
    with backend_url("postgres", tmp_path) as url:
        yield url


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


async def test_replicas_starting_together_migrate_once(pg_url):
    stores = [open_store(pg_url) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in stores))
    try:
        rows = postgres_execute(f"SELECT version FROM {_schema(pg_url)}.schema_version")
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        await stores[0].seed_account("acme", 10)
        assert (await stores[3].get_account("acme")).balance == 10
    finally:
        for s in stores:
            await s.close()


async def test_a_schema_migrated_by_a_newer_flowgate_is_refused(pg_url):
    first = open_store(pg_url)
    await first.start()
    await first.close()
    postgres_execute(f"INSERT INTO {_schema(pg_url)}.schema_version VALUES ({len(MIGRATIONS) + 1})")
    later = open_store(pg_url)
    with pytest.raises(SchemaTooNew, match="upgrade flowgate"):
        await later.start()
    await later.close()


async def test_the_readme_queries_read_the_ledger_and_balances(pg_url):
    s = open_store(pg_url)
    await s.start()
    try:
        await s.seed_account("acme", 1000)
        await s.open_hold("j1", "acme", 100, time.time() + 60, {"flow": "wf", "key_id": "k"})
        await s.open_hold("j2", "acme", 100, time.time() + 60, {"flow": "wf", "key_id": "k"})
        await s.settle("j1", "acme", 40, {"outcome": "completed", "output_tokens": 40})
        schema = _schema(pg_url)
        today = postgres_execute(
            f"SELECT account, outcome, count(*), sum(credits) FROM {schema}.ledger "
            "WHERE ended >= date_trunc('day', now()) GROUP BY account, outcome")
        assert [tuple(r) for r in today] == [("acme", "completed", 1, 40)]
        balances = postgres_execute(f"SELECT account, balance, held, balance - held AS available, spent "
                                    f"FROM {schema}.accounts")
        assert [tuple(r) for r in balances] == [("acme", 960, 100, 860, 40)]
        entry = postgres_execute(f"SELECT entry->>'flow', (entry->>'credits')::int FROM {schema}.ledger")
        assert [tuple(r) for r in entry] == [("wf", 40)]
    finally:
        await s.close()


async def test_a_dropped_table_is_a_loud_503_and_a_dropped_schema_is_made_again(pg_url, capfd):
    s = open_store(pg_url)
    await s.start()
    try:
        await s.seed_account("acme", 10)
        postgres_execute(f"DROP TABLE {_schema(pg_url)}.accounts")
        with pytest.raises(StoreUnavailable):
            await s.get_account("acme")
        assert "postgres_schema_missing" in capfd.readouterr().err
        with pytest.raises(StoreUnavailable):  # still missing: every call says so
            await s.get_account("acme")
        postgres_execute(f"DROP SCHEMA {_schema(pg_url)} CASCADE")
        assert await s.grant("acme", 5, initial=10) == 15  # the schema is made again; acme re-created
        assert "account_seeded" in capfd.readouterr().err
    finally:
        await s.close()


async def test_an_unreachable_database_at_start_is_migrated_on_first_use(tmp_path):
    from tests.backends import ThrowawayPostgres

    server = ThrowawayPostgres(tmp_path)
    s = open_store(server.url)
    try:
        await s.start()  # down: the gateway still starts; runs answer 503
        began = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.ping()
        assert time.monotonic() - began < 1.5
        server.start()
        await s.seed_account("acme", 5)  # migrated now
        assert (await s.get_account("acme")).balance == 5
    finally:
        await s.close()
        server.remove()
