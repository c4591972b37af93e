"""prefs through a real PgBouncer in transaction mode (PREFS_DATABASE_POOLER=transaction).

PgBouncer gets two server connections, so the transactions of the service's many client
connections take turns on the same two server sessions: a prepared statement, a setting or a
lock left in a session would be met by another client's next transaction.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from prefs import db
from prefs.app import create_app
from prefs.pos.service import LOOKUP_SERVER_SETTINGS
from prefs.retention import service as retention
from prefs.settings import Settings, load
from tests.support.customer import grant, keep
from tests.support.database import Database, admin, with_database
from tests.support.partner import reorder
from tests.support.pgbouncer import MISSING, PgBouncer, pgbouncer_path
from tests.support.servers import LiveServer
from tests.support.till import disclosures, fresh_card, look_up, shopper, till_key

if pgbouncer_path() is None:
    print(f"\ntest_pgbouncer.py skipped: {MISSING}")
    pytest.skip(MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def bouncer(database: Database) -> Iterator[PgBouncer]:
    with PgBouncer(database.server_url, pool_size=2) as running:
        yield running


@pytest.fixture(scope="module")
def pooled_settings(bouncer: PgBouncer, database: Database, settings: Settings) -> Settings:
    """The session's settings (same keys), with the database reached through PgBouncer."""
    return load(
        {
            "PREFS_DATA_DIR": str(settings.data_dir),
            "PREFS_DATABASE_URL": bouncer.url(database.url),
            "PREFS_DATABASE_POOLER": "transaction",
            "PREFS_DATABASE_LAYOUT": database.layout,
            "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": "1000000",
            "PREFS_EXPIRY_INTERVAL": "86400",
            "PREFS_PURGE_INTERVAL": "86400",
        }
    )


@pytest.fixture(scope="module")
def pooled_server(pooled_settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(pooled_settings)) as live:
        yield live


@pytest.fixture
async def pooled(pooled_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=pooled_server.url, timeout=60) as http:
        yield http


async def through(bouncer: PgBouncer, database: Database) -> asyncpg.Connection:
    """A client connection through PgBouncer, as the service makes them."""
    return await db.connect(bouncer.url(database.url), pooler="transaction")


async def test_pgbouncer_refuses_the_lookup_pools_start_up_settings(bouncer, database):
    """Why the setting exists: the lookup's settings cannot travel as start-up parameters."""
    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(bouncer.url(database.url), server_settings=LOOKUP_SERVER_SETTINGS)
    with pytest.raises(ValueError, match="SET LOCAL"):
        await db.create_pool(
            bouncer.url(database.url), 1, 1, LOOKUP_SERVER_SETTINGS, pooler="transaction"
        )


async def test_till_lookups_through_pgbouncer_answer_log_and_leave_no_session_setting(
    client, pooled, pooled_server, conn, new_customer, bouncer, database
):
    shoppers = []
    for _ in range(3):
        customer, card, _ = await shopper(new_customer, client)
        await grant(client, customer)
        shoppers.append((customer, card))
    _, key = await till_key(conn)
    batcher = pooled_server.server.config.app.state.lookup_batcher
    statements_before = batcher.statements

    # 30 lookups at once, hits and misses, from as many client connections as the app opens
    asks = [(customer, card) for customer, card in shoppers for _ in range(6)]
    asks += [(None, fresh_card()) for _ in range(12)]
    answers = await asyncio.gather(*(look_up(pooled, key, card=card) for _, card in asks))

    for (customer, _), answer in zip(asks, answers, strict=True):
        if customer is None:
            assert answer.status_code == 404, answer.text
        else:
            assert answer.status_code == 200, answer.text
            assert [p["rank"] for p in answer.json()["preferences"]] == [1, 2, 3]
    for customer, _ in shoppers:  # every answer left with its committed record
        assert await disclosures(conn, customer.id) == 6
    assert batcher.statements - statements_before < len(asks), "lookups went in batches"

    # The lookup's SET LOCAL ended with its transaction: no server session keeps it. (jit is
    # left out: asyncpg itself turns it off at session level around its type introspection and
    # back on in another transaction, which behind PgBouncer may be another server session.)
    defaults = {
        name: await conn.fetchval(f"SHOW {name}") for name in ("plan_cache_mode", "enable_seqscan")
    }
    assert defaults != {name: LOOKUP_SERVER_SETTINGS[name] for name in defaults}
    clients = [await through(bouncer, database) for _ in range(4)]
    try:
        for each in clients:
            for name, default in defaults.items():
                assert await each.fetchval(f"SHOW {name}") == default
    finally:
        for each in clients:
            await each.close()


async def test_an_idempotent_replay_through_pgbouncer_orders_once(
    client, pooled, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer)
    key = f"pooled-{secrets.token_hex(4)}"

    first = await reorder(pooled, customer, chinos["id"], quantity=2, key=key)
    assert first.status_code == 201, first.text
    replays = await asyncio.gather(
        *(reorder(pooled, customer, chinos["id"], quantity=2, key=key) for _ in range(6))
    )
    for replay in replays:
        assert replay.status_code == 201, replay.text
        assert replay.headers["idempotent-replayed"] == "true"
        assert replay.content == first.content
    rows = "SELECT count(*) FROM reorders WHERE customer_id = $1"
    assert await conn.fetchval(rows, uuid.UUID(customer.id)) == 1


async def test_the_purge_lock_is_held_by_one_transaction_through_pgbouncer(
    bouncer, database, conn, vault
):
    holder, other = await through(bouncer, database), await through(bouncer, database)
    try:
        async with holder.transaction():
            assert await holder.fetchval(retention.LOCK)
            assert await retention.purge(other, vault, "prefs", 400) is None  # another runs
        # the lock ended with its transaction, on whichever server session it ran
        assert await retention.purge(other, vault, "prefs", 400) is not None
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
        assert await conn.fetchval(held) == 0
    finally:
        await holder.close()
        await other.close()


async def test_migrations_run_through_pgbouncer(bouncer, database):
    name = f"prefs_pooled_{secrets.token_hex(3)}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    url = bouncer.url(with_database(database.server_url, name))
    try:
        await asyncio.to_thread(db.migrate, url, pooler="transaction")
        previous = await _previous_revision()
        await asyncio.to_thread(db.downgrade, url, previous, pooler="transaction")
        await asyncio.to_thread(db.migrate, url, pooler="transaction")
        pooled: Any = await db.connect(url, pooler="transaction")
        try:
            assert (await db.schema_state(pooled, db.head_revision())).state == "head"
        finally:
            await pooled.close()
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _previous_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(db.migrations_dir())).get_revision(db.head_revision())
    assert head is not None and isinstance(head.down_revision, str)
    return head.down_revision
