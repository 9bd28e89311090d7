"""PostgreSQL specifics: the schema is created and migrated at start (once, by replicas starting
together), a newer schema is refused, the ledger is a table an operator queries with the README's
SQL, and careless operators get a clear refusal."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.errors import StoreUnavailable
from proxy.store import Account, open_store
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


async def test_a_schema_named_after_a_keyword_works():
    # checked at load as lower-case letters, digits and _: "order" is one, and a keyword in SQL
    from tests.backends import postgres_url, require_postgres

    require_postgres()
    s = open_store(f"{postgres_url()}?schema=order")
    try:
        await s.start()
        await s.seed_account("acme", 7)
        assert (await s.get_account("acme")).balance == 7
        assert [tuple(r) for r in postgres_execute('SELECT account, balance FROM "order".accounts')] == [("acme", 7)]
    finally:
        await s.close()
        postgres_execute('DROP SCHEMA IF EXISTS "order" CASCADE')


async def test_a_role_without_create_on_the_database_uses_the_schema_a_dba_made_for_it(tmp_path):
    # least privilege: the DBA makes the schema for the gateway's role, which may not create schemas
    import asyncpg

    from tests.backends import ThrowawayPostgres

    server = ThrowawayPostgres(tmp_path)
    server.start()
    try:
        admin = await asyncpg.connect(server.url)
        await admin.execute("CREATE ROLE app LOGIN; CREATE SCHEMA flowgate AUTHORIZATION app")
        await admin.close()
        s = open_store(server.url.replace("postgres@", "app@"))
        try:
            await s.start()
            await s.seed_account("acme", 3)
            assert (await s.get_account("acme")).balance == 3
        finally:
            await s.close()
    finally:
        server.remove()


async def test_a_version_1_schema_is_upgraded_in_place_with_its_data(pg_url):
    # a database last migrated by a flowgate from before the keys (migration 2) keeps its ledger
    import asyncpg

    from tests.backends import postgres_url

    schema = _schema(pg_url)
    conn = await asyncpg.connect(postgres_url())
    try:
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA {schema}; SET LOCAL search_path TO {schema}")
            await conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            await conn.execute(MIGRATIONS[0])
            await conn.execute("INSERT INTO schema_version VALUES (1); "
                               "INSERT INTO accounts (account, balance, spent) VALUES ('acme', 60, 40); "
                               "INSERT INTO ledger (job_id, account, credits, ended_at, entry) "
                               "VALUES ('old', 'acme', 40, 1, '{\"job_id\": \"old\", \"credits\": 40}')")
    finally:
        await conn.close()
    s = open_store(pg_url)
    try:
        await s.start()
        assert [r[0] for r in postgres_execute(f"SELECT version FROM {schema}.schema_version ORDER BY 1")] == [1, 2]
        assert await s.get_account("acme") == Account(60, 0, 40)
        assert [e["job_id"] for e in await s.ledger("acme")] == ["old"]
        assert await s.put_key({"id": "k1", "sha256": "a" * 64}) == "ok"
        assert await s.keys_version() == 1
    finally:
        await s.close()


async def test_a_database_that_accepts_and_never_answers_is_a_bounded_503():
    import socket

    silent = socket.create_server(("127.0.0.1", 0), backlog=64)  # the kernel completes the handshakes
    port = silent.getsockname()[1]
    s = open_store(f"postgresql://app:s3cret-pw@127.0.0.1:{port}/db")
    try:
        began = time.monotonic()
        await s.start()
        results = await asyncio.gather(*(s.get_account("acme") for _ in range(30)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) for r in results)
        assert "s3cret" not in " ".join(r.detail for r in results)
        assert time.monotonic() - began < 6
    finally:
        await s.close()
        silent.close()


async def test_a_refused_login_puts_its_password_in_no_log_line_and_no_error_detail(capfd):
    from urllib.parse import urlsplit

    from tests.backends import postgres_url, require_postgres

    require_postgres()
    parts = urlsplit(postgres_url())  # a role that does not exist (the local server may trust passwords)
    url = parts._replace(netloc=f"nosuchrole:Wr0ng-s3cret%2Fpw@{parts.hostname}:{parts.port or 5432}").geturl()
    s = open_store(url)
    try:
        await s.start()  # runs answer 503 (logged once as unavailable at start)
        with pytest.raises(StoreUnavailable) as err:
            await s.get_account("acme")
        out = capfd.readouterr()
        assert "store_unavailable_at_start" in out.err
        assert "Wr0ng" not in out.out + out.err + err.value.detail
    finally:
        await s.close()


async def _locked(url: str, statement: str):
    """A transaction of another client holding ``statement``'s locks (rolled back by the caller)."""
    import asyncpg

    from tests.backends import postgres_url

    locker = await asyncpg.connect(postgres_url())
    tr = locker.transaction()
    await tr.start()
    await locker.execute(statement.format(schema=url.split("schema=")[1]))
    return locker, tr


async def test_a_locked_hold_row_costs_its_own_checkpoint_not_the_batchs(tmp_path):
    """A hold row another transaction holds (a settlement, a growth) is skipped: the batch's other
    holds are written at once instead of waiting, and failing, behind it."""
    from proxy.policies.checkpoints import Checkpoints
    from proxy.store import Progress

    far = time.time() + 3600
    with backend_url("postgres", tmp_path) as url:
        store = open_store(url)
        await store.start()
        await store.seed_account("acme", 1000)
        for job in ("a", "b", "c"):
            await store.open_hold(job, "acme", 10, far, {})
        locker, tr = await _locked(url, "SELECT 1 FROM {schema}.holds WHERE job_id = 'a' FOR UPDATE")
        try:
            batcher = Checkpoints(store)
            for job in ("a", "b", "c"):
                batcher.add(Progress(job, "acme", 7, 1, 7, far))
            started = time.monotonic()
            await batcher.flush()
            assert time.monotonic() - started < 2
            held = {h.job_id: h.metered for h in await store.expired_holds(["acme"], now=far + 10**6)}
            assert held == {"a": 0, "b": 7, "c": 7}
        finally:
            await tr.rollback()
            await locker.close()
            await store.close()


async def test_a_bounded_flush_lets_a_shutdown_close_a_store_that_cannot_answer(tmp_path, capfd):
    from proxy.policies.checkpoints import Checkpoints
    from proxy.store import Progress

    far = time.time() + 3600
    with backend_url("postgres", tmp_path) as url:
        store = open_store(url)
        await store.start()
        await store.seed_account("acme", 1000)
        await store.open_hold("a", "acme", 10, far, {})
        locker, tr = await _locked(url, "LOCK TABLE {schema}.holds IN ACCESS EXCLUSIVE MODE")  # a migration, say
        try:
            batcher = Checkpoints(store)
            batcher.add(Progress("a", "acme", 1, 1, 1, far))
            await asyncio.sleep(0.1)
            batcher.add(Progress("a", "acme", 2, 1, 2, far))
            started = time.monotonic()
            await batcher.flush(within=1.0)
            await store.close()
            assert time.monotonic() - started < 2
            assert '"checkpoints_abandoned"' in capfd.readouterr().err
        finally:
            await tr.rollback()
            await locker.close()
