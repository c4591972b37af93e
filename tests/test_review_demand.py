"""Review of anonymous demand following the catalogue (revision 0018): what the merge missed."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from prefs import db, product_status
from prefs.catalogue import service as catalogue
from prefs.catalogue.schemas import ImportRow
from prefs.crypto import Vault
from prefs.customer_keys import lock_customer
from prefs.insights import service as insights
from prefs.keys import service as keys
from tests.support.customer import grant, keep
from tests.support.database import Database
from tests.support.rights import enrol, own_database, run_prefs
from tests.support.servers import serving
from tests.test_purchases import catalogue_product, fresh_sku


async def _contributions(conn: Any, vault: Vault, customer_id: str) -> int:
    """How many demand groups the customer counts in (by their pseudonym, as insights does)."""
    pseudonym = vault.index.digest("demand", uuid.UUID(customer_id).bytes)
    count: int = await conn.fetchval(
        "SELECT count(*) FROM demand_contributions WHERE pseudonym = $1", pseudonym
    )
    return count


def _chinos(sku: str, **more: Any) -> dict[str, Any]:
    return {"product": {"sku": sku, "name": "Classic Chino"}, **more}


async def test_demand_follows_statuses_the_catalogue_moved_before_the_upgrade(
    database: Database, tmp_path: Path
) -> None:
    """Before revision 0018 demand counted the stored status, and imports recorded no moves. A
    product discontinued then, kept by a customer who added it while it was sold, counts from
    the upgrade on; a SKU the catalogue added then as available no longer counts by its
    customer's own word. Without this, both stay wrong until each customer writes again."""
    async with own_database(database.server_url, tmp_path, "upgrade") as own:
        vault = own.vault()
        gone, known_now = fresh_sku(), fresh_sku()
        conn = await own.connect()
        try:
            await catalogue_product(conn, gone, "available")
        finally:
            await conn.close()
        async with serving(own.settings()) as http:
            wants_it, typed_it = await enrol(http, own.issuer), await enrol(http, own.issuer)
            await keep(http, wants_it, _chinos(gone))
            await keep(http, typed_it, _chinos(known_now, status="discontinued"))
            for shopper in (wants_it, typed_it):
                await grant(http, shopper, "insights", ["product"])

        await asyncio.to_thread(db.downgrade, own.url, "0017")
        conn = await own.connect()
        try:
            assert await _contributions(conn, vault, wants_it.id) == 0
            assert await _contributions(conn, vault, typed_it.id) == 1
            # the previous release's import: statuses move, nobody is recounted, nothing recorded
            await conn.execute(
                "UPDATE catalogue_products SET status = 'discontinued' WHERE sku = $1", gone
            )
            await catalogue_product(conn, known_now, "available")
            await conn.execute("UPDATE catalogue_state SET version = version + 1")
        finally:
            await conn.close()

        code, output = await run_prefs(
            "migrate",
            database_url=own.url,
            data_dir=own.data_dir,
            master_keys=own.master_keys,
            index_keys=own.index_keys,
        )
        assert code == 0, output
        conn = await own.connect()
        try:
            assert await _contributions(conn, vault, wants_it.id) == 1
            assert await _contributions(conn, vault, typed_it.id) == 0
            assert await conn.fetchval("SELECT count(*) FROM catalogue_moves") == 0
        finally:
            await conn.close()


async def test_the_recount_probes_the_moved_skus_by_hash_whatever_plan_it_runs_under(conn):
    """An import's recount reads every preference, looking each one's SKU index up among up to
    MOVES_AT_ONCE SKUs times the index key versions. Under a generic plan (a prepared statement
    run often enough, or `plan_cache_mode = force_generic_plan` as poolers of prepared statements
    advise) `= ANY($1)` walks the whole array for every row: rows x moves comparisons, hours at
    a million customers. The indexes must be probed through a hash."""
    await conn.execute(f"PREPARE review_keepers (bytea[]) AS {insights.KEEPERS}")
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            plan = await conn.fetch("EXPLAIN EXECUTE review_keepers('{}')")
    finally:
        await conn.execute("DEALLOCATE review_keepers")
    shown = "\n".join(row[0] for row in plan)
    assert "hashed SubPlan" in shown, shown


async def test_a_customer_keeping_several_moved_skus_is_recounted_once_per_pass(
    client, conn, vault, new_customer, monkeypatch
):
    """The moves are read MOVES_AT_ONCE at a time (one read of every preference each); a customer
    keeping SKUs of several such parts was recounted once per part (after the upgrade, which
    records the whole catalogue as moved, that is many times over). Every move of a pass
    committed before its first recount, so one recount per customer and pass is enough."""
    customer = await new_customer()
    skus = [fresh_sku() for _ in range(3)]
    for sku in skus:
        await catalogue_product(conn, sku, "available")
        await keep(client, customer, _chinos(sku))
    await grant(client, customer, "insights", ["product"])
    monkeypatch.setattr(insights, "MOVES_AT_ONCE", 1)

    async def moved(skus: list[str]) -> int:
        async with conn.transaction():
            await conn.execute(
                "UPDATE catalogue_products SET status = 'discontinued' WHERE sku = ANY($1)", skus
            )
            await conn.execute("UPDATE catalogue_state SET version = version + 1")
            await product_status.record_moves(conn, skus)
        return await insights.recount_keepers(conn, vault)

    others = await moved([fresh_sku()])  # kept by nobody: whoever else is recounted each time
    assert await moved(skus) == others + 1
    assert await _contributions(conn, vault, customer.id) == 2  # GROUPS_PER_CUSTOMER


async def _waits_on_a_lock(conn: Any, pid: int) -> None:
    """Until the backend ``pid`` waits for a lock another transaction holds."""
    query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
    for _ in range(500):
        if await conn.fetchval(query, pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} never waited for a lock")


async def test_an_import_moving_skus_a_recount_is_forgetting_does_not_deadlock_with_it(
    conn, database
):
    """Two imports at once: one's recount forgets the moves it followed while the other's batch
    moves the same SKUs again. The batch recorded its moves in file order and the recount took
    them in table order, so each could hold a SKU the other waited for: a deadlock, the recount
    failing the first import's command (or the batch retried line by line). Both take them in
    SKU order."""
    skus = [fresh_sku(), fresh_sku()]
    for sku in skus:
        await catalogue_product(conn, sku, "available")
    async with conn.transaction():  # an import moved them; its recount has yet to forget them
        await conn.execute("UPDATE catalogue_state SET version = version + 1")
        await product_status.record_moves(conn, skus)
    pending = [move for move in await product_status.moves(conn, 10**6) if move[0] in skus]
    taken_first, taken_next = [
        row["sku"]
        for row in await conn.fetch(
            "SELECT sku FROM catalogue_moves WHERE sku = ANY($1) ORDER BY ctid", skus
        )
    ]
    importer, holder = await db.connect(database.url), await db.connect(database.url)
    try:
        await conn.execute("SET deadlock_timeout = '100ms'")  # the recount is the one to find it
        await importer.execute("SET deadlock_timeout = '10s'")
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM catalogue_moves WHERE sku = $1 FOR UPDATE", taken_first)
        forgetting = asyncio.create_task(product_status.followed(conn, pending))
        await _waits_on_a_lock(holder, conn.get_server_pid())
        report = catalogue.ImportReport()
        lines = [
            (line, ImportRow(sku=sku, name="Classic Chino", status="discontinued"))
            for line, sku in enumerate([taken_next, taken_first], start=1)
        ]
        importing = asyncio.create_task(catalogue.import_batch(importer, lines, report))
        await _waits_on_a_lock(holder, importer.get_server_pid())
        await held.rollback()
        await forgetting
        await importing
        assert not report.refused and report.changed == 2, report
        still = {sku for sku, _ in await product_status.moves(conn, 10**6)}
        assert set(skus) <= still  # the second import's moves wait for its own recount
    finally:
        await conn.execute("RESET deadlock_timeout")
        await importer.close()
        await holder.close()


async def test_a_reindex_recounts_each_customers_demand_under_their_lock(
    client: Any, conn: Any, database: Database, vault: Vault, new_customer: Any
) -> None:
    """`prefs keys reindex` recounts every customer sharing with `insights`, as any recount
    does: under the customer's lock, so it waits for a write of theirs in progress instead of
    taking back and making again their contributions beside it."""
    customer = await new_customer()
    await grant(client, customer, "insights", ["product"])
    writer = await db.connect(database.url)
    try:
        await writer.execute("BEGIN")
        assert await lock_customer(writer, uuid.UUID(customer.id))  # a write of theirs
        reindex = asyncio.create_task(keys.reindex(conn, vault))
        waited = False
        for _ in range(1500):
            if reindex.done():
                break
            waited = await writer.fetchval(
                "SELECT count(*) > 0 FROM pg_locks WHERE pid = $1 AND NOT granted",
                conn.get_server_pid(),
            )
            if waited:
                break
            await asyncio.sleep(0.02)
        assert waited, "the reindex recounted the customer without waiting for their lock"
        assert not reindex.done()
    finally:
        await writer.execute("COMMIT")
        await writer.close()
    await reindex
