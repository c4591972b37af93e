"""Anonymous demand counts the catalogue's status of what customers keep, as every read shows it:
an import records the SKUs whose status it moved, and the service's periodic job recounts the
customers keeping them, found by the SKU's keyed index (the SKU itself is sealed)."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from prefs import db
from prefs.app import create_app
from prefs.catalogue import service as catalogue
from prefs.catalogue.schemas import ImportRow
from prefs.crypto import Vault
from prefs.insights import service as insights
from prefs.preferences import service as preferences
from prefs.retention import service as retention
from prefs.settings import Settings, load
from tests.support.customer import grant, keep, withdraw
from tests.support.database import Database
from tests.support.servers import LiveServer
from tests.test_catalogue import import_without_keys, write_lines
from tests.test_purchases import catalogue_product, fresh_sku


@pytest.fixture
async def pool(database: Database) -> AsyncIterator[Any]:
    """A pool as the service's, for running its periodic recount."""
    opened = await db.create_pool(database.app_url, 1, 2, pooler=database.pooler)
    yield opened
    await opened.close()


async def _contributions(conn: Any, vault: Vault, customer: Any) -> int:
    """How many demand groups the customer counts in (by their pseudonym, as insights does)."""
    pseudonym = vault.index.digest("demand", uuid.UUID(customer.id).bytes)
    count: int = await conn.fetchval(
        "SELECT count(*) FROM demand_contributions WHERE pseudonym = $1", pseudonym
    )
    return count


async def _import(
    conn: asyncpg.Connection, pool: Any, vault: Vault, statuses: dict[str, str]
) -> None:
    """An import as `prefs catalogue import` makes it (no keys), then the service's periodic
    recount."""
    rows = [
        (line, ImportRow(sku=sku, name="Classic Chino", status=status))  # type: ignore[arg-type]
        for line, (sku, status) in enumerate(statuses.items(), start=1)
    ]
    report = await catalogue.import_rows(conn, None, rows, catalogue.ImportReport(), 7)
    assert not report.refused, report.refused
    assert await retention.recount_moved(pool, vault) is not None


def _chinos(sku: str, waist: str = "34") -> dict[str, Any]:
    return {"product": {"sku": sku, "name": "Classic Chino"}, "attributes": {"waist": waist}}


async def _keeper(client: Any, conn: asyncpg.Connection, new_customer: Any) -> tuple[Any, str, Any]:
    """A customer sharing their products with `insights` who keeps chinos of a SKU the
    catalogue has as available: the customer, the SKU and the preference kept."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "available")
    await grant(client, customer, "insights", ["product"])
    kept = await keep(client, customer, _chinos(sku))
    return customer, sku, kept


async def test_a_product_the_catalogue_makes_available_again_stops_counting_in_demand(
    client, conn, pool, vault, new_customer
):
    """The other way round: a customer counted as wanting a discontinued product back is no
    longer counted once the catalogue sells it again, and is counted again when it stops."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "discontinued")
    await grant(client, customer, "insights", ["product", "attributes"])
    await keep(client, customer, _chinos(sku))
    assert await _contributions(conn, vault, customer) == 1
    await _import(conn, pool, vault, {sku: "available"})
    [shown] = (await client.get("/v1/me/preferences", headers=customer.headers)).json()["items"]
    assert shown["status"] == "available"
    assert await _contributions(conn, vault, customer) == 0
    await _import(conn, pool, vault, {sku: "discontinued"})
    assert await _contributions(conn, vault, customer) == 1


async def test_a_sku_new_to_the_catalogue_takes_the_customers_status_out_of_demand(
    client, conn, pool, vault, new_customer
):
    """A product the catalogue did not know counts by its customer's status; once an import adds
    its SKU as available, it is the shop's fact and no longer counts."""
    customer = await new_customer()
    sku = fresh_sku()
    await grant(client, customer, "insights", ["product"])
    await keep(client, customer, {**_chinos(sku), "status": "discontinued"})
    assert await _contributions(conn, vault, customer) == 1
    await _import(conn, pool, vault, {sku: "available"})
    assert await _contributions(conn, vault, customer) == 0


async def test_an_import_moving_many_skus_recounts_every_customer_keeping_them(
    client, conn, pool, vault, new_customer
):
    """An import over several batches moves 20 SKUs kept by 12 customers: each sharing for
    insights counts in the groups of their highest-ranked discontinued products (at most two),
    the others not at all, and a customer keeping only SKUs the import left alone is untouched."""
    moved = [fresh_sku() for _ in range(20)]
    kept_alone = fresh_sku()
    for sku in [*moved, kept_alone]:
        await catalogue_product(conn, sku, "available")
    customers = [await new_customer() for _ in range(12)]
    expected = {}
    for n, customer in enumerate(customers):
        mine = [moved[(n + i) % 20] for i in range(n % 4)]  # 0 to 3 of the moved SKUs
        for sku in [kept_alone, *mine]:
            await keep(client, customer, _chinos(sku, waist=str(30 + n)))
        if n % 3 != 2:
            await grant(client, customer, "insights", ["product", "attributes"])
            expected[customer.id] = min(len(mine), 2)
        else:
            expected[customer.id] = 0
        assert await _contributions(conn, vault, customer) == 0
    await _import(conn, pool, vault, dict.fromkeys(moved, "discontinued"))
    counted = {c.id: await _contributions(conn, vault, c) for c in customers}
    assert counted == expected
    assert sum(counted.values()) >= 10
    assert await conn.fetchval("SELECT count(*) FROM catalogue_moves") == 0
    # a customer who stops sharing is taken out, and stays out however the catalogue moves
    await withdraw(client, customers[0], "insights")
    await _import(conn, pool, vault, dict.fromkeys(moved, "available"))
    await _import(conn, pool, vault, dict.fromkeys(moved, "discontinued"))
    assert await _contributions(conn, vault, customers[0]) == 0
    assert await _contributions(conn, vault, customers[1]) == expected[customers[1].id]


async def test_an_import_stopped_before_its_recount_is_finished_by_the_next(
    client, conn, vault, new_customer
):
    """The batches commit before demand follows them: the moves are kept in the database, so an
    import that stopped in between (here: only its batch ran) is followed by the next import
    given the keys (the development demo's, the load test's seed), even one that changes
    nothing."""
    customer, sku, _ = await _keeper(client, conn, new_customer)
    row = ImportRow(sku=sku, name="Classic Chino", status="discontinued")
    await catalogue.import_batch(conn, [(1, row)], catalogue.ImportReport())
    assert await _contributions(conn, vault, customer) == 0
    await catalogue.import_rows(conn, vault, [], catalogue.ImportReport())
    assert await _contributions(conn, vault, customer) == 1


async def test_a_preference_written_without_its_sku_index_still_follows_an_import(
    client, conn, pool, vault, new_customer
):
    """A row the previous release writes during a rollout has no index (or one made for the
    ciphertext it replaced): an import recounts its customer all the same, and the backfill
    `prefs migrate` runs indexes it."""
    customer, sku, kept = await _keeper(client, conn, new_customer)
    ids = (uuid.UUID(customer.id), uuid.UUID(kept["id"]))
    indexed = "SELECT sku_index FROM preferences WHERE customer_id = $1 AND preference_id = $2"
    made = await conn.fetchval(indexed, *ids)
    await conn.execute(
        "UPDATE preferences SET sku_index = NULL WHERE customer_id = $1 AND preference_id = $2",
        *ids,
    )
    await _import(conn, pool, vault, {sku: "discontinued"})
    assert await _contributions(conn, vault, customer) == 1
    assert sum([done async for done in preferences.index_sku_backlog(conn, vault)]) >= 1
    assert await conn.fetchval(indexed, *ids) == made


async def test_the_sku_index_is_keyed_and_names_its_ciphertext(client, conn, vault, new_customer):
    """The index is an HMAC under the index keyring, never a bare hash of the SKU (a catalogue's
    SKUs are public, so a bare hash would name the product); a product without a SKU gets an
    index of its own, like any other."""
    customer = await new_customer()
    sku = fresh_sku()
    await keep(client, customer, _chinos(sku))
    await keep(client, customer, {"product": {"name": "Linen shirt"}})
    rows = await conn.fetch(
        """SELECT sku_index, sku_index_of, substring(sealed FROM 6 FOR 12) AS nonce
           FROM preferences WHERE customer_id = $1 ORDER BY rank""",
        uuid.UUID(customer.id),
    )
    assert rows[0]["sku_index"] in vault.index.skus([sku])
    assert hashlib.sha256(sku.encode()).digest() not in rows[0]["sku_index"]
    assert rows[1]["sku_index"] not in vault.index.skus([sku])
    assert all(row["sku_index_of"] == row["nonce"] for row in rows)


async def test_the_service_recounts_demand_after_an_import_run_without_keys(
    client: Any,
    conn: asyncpg.Connection,
    vault: Vault,
    new_customer: Any,
    settings: Settings,
    database: Database,
    tmp_path: Path,
) -> None:
    """`prefs catalogue import` run by a job holding no keys discontinues a product a customer
    sharing with `insights` keeps: nobody is recounted by the import, and the running service
    counts the customer within its expiry interval (here 1 s), as the catalogue says."""
    customer, sku, _ = await _keeper(client, conn, new_customer)
    line = {"sku": sku, "name": "Classic Chino", "status": "discontinued"}
    done = import_without_keys(
        database, tmp_path / "job", write_lines(tmp_path / "discontinued.jsonl", [line])
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert await _contributions(conn, vault, customer) == 0
    every_second = load(
        {
            "PREFS_DATA_DIR": str(settings.data_dir),
            **database.app_env,
            "PREFS_EXPIRY_INTERVAL": "1",
            "PREFS_POOL_MIN_SIZE": "1",
        }
    )
    with LiveServer(create_app(every_second)):
        deadline = time.monotonic() + 30
        while await _contributions(conn, vault, customer) == 0:
            assert time.monotonic() < deadline, "the service never recounted the keeper"
            await asyncio.sleep(0.2)
    assert await _contributions(conn, vault, customer) == 1
    waiting = await conn.fetchval("SELECT count(*) FROM catalogue_moves WHERE sku = $1", sku)
    assert waiting == 0


async def test_the_periodic_recount_with_no_moves_waiting_is_one_query(
    conn: asyncpg.Connection, database: Database, vault: Vault
) -> None:
    """Every tick of every worker asks whether an import moved anything: with nothing waiting,
    that one cheap query is all it sends (no lock, no read of preferences)."""
    await insights.recount_keepers(conn, vault)  # whatever earlier tests left waiting
    sent: list[str] = []

    async def watch(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda query: sent.append(query.query))

    async def as_the_services_pool(connection: asyncpg.Connection) -> None:
        """Released without a reset query, as by prefs.db.create_pool."""

    watched = await asyncpg.create_pool(
        db.asyncpg_dsn(database.app_url),
        min_size=1,
        max_size=2,
        init=watch,
        reset=as_the_services_pool,
        **db.pooler_options(database.pooler),
    )
    try:
        assert await retention.recount_moved(watched, vault) == (0, 0)
    finally:
        await watched.close()
    assert sent == [retention.MOVES_WAITING]


async def test_one_worker_recounts_at_a_time(
    client: Any,
    conn: asyncpg.Connection,
    pool: Any,
    database: Database,
    vault: Vault,
    new_customer: Any,
) -> None:
    """While one worker (or instance) recounts, another's tick leaves the moves to it rather
    than reading every preference a second time; once it is done, the next tick recounts."""
    customer, sku, _ = await _keeper(client, conn, new_customer)
    row = ImportRow(sku=sku, name="Classic Chino", status="discontinued")
    await catalogue.import_rows(conn, None, [(1, row)], catalogue.ImportReport())
    recounting = await db.connect(database.url)
    try:
        async with recounting.transaction():
            assert await recounting.fetchval(retention.RECOUNT_LOCK)
            assert await retention.recount_moved(pool, vault) is None
            assert await _contributions(conn, vault, customer) == 0
        waiting, recounted = await retention.recount_moved(pool, vault) or (0, 0)
    finally:
        await recounting.close()
    assert waiting >= 1 and recounted >= 1
    assert await _contributions(conn, vault, customer) == 1
