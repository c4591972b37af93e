"""Anonymous demand counts the catalogue's status of what customers keep, as every read shows it:
an import that moves a SKU's status recounts the customers keeping it, found by the SKU's keyed
index (the SKU itself is sealed)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import asyncpg

from prefs.catalogue import service as catalogue
from prefs.catalogue.schemas import ImportRow
from prefs.crypto import Vault
from prefs.preferences import service as preferences
from tests.support.customer import grant, keep, withdraw
from tests.test_purchases import catalogue_product, fresh_sku


async def _contributions(conn: Any, vault: Vault, customer: Any) -> int:
    """How many demand groups the customer counts in (by their pseudonym, as insights does)."""
    pseudonym = vault.index.digest("demand", uuid.UUID(customer.id).bytes)
    count: int = await conn.fetchval(
        "SELECT count(*) FROM demand_contributions WHERE pseudonym = $1", pseudonym
    )
    return count


async def _import(conn: asyncpg.Connection, vault: Vault, statuses: dict[str, str]) -> None:
    rows = [
        (line, ImportRow(sku=sku, name="Classic Chino", status=status))  # type: ignore[arg-type]
        for line, (sku, status) in enumerate(statuses.items(), start=1)
    ]
    report = await catalogue.import_rows(conn, vault, rows, catalogue.ImportReport(), 7)
    assert not report.refused, report.refused


def _chinos(sku: str, waist: str = "34") -> dict[str, Any]:
    return {"product": {"sku": sku, "name": "Classic Chino"}, "attributes": {"waist": waist}}


async def test_a_product_the_catalogue_makes_available_again_stops_counting_in_demand(
    client, conn, vault, new_customer
):
    """The other way round: a customer counted as wanting a discontinued product back is no
    longer counted once the catalogue sells it again, and is counted again when it stops."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "discontinued")
    await grant(client, customer, "insights", ["product", "attributes"])
    await keep(client, customer, _chinos(sku))
    assert await _contributions(conn, vault, customer) == 1
    await _import(conn, vault, {sku: "available"})
    [shown] = (await client.get("/v1/me/preferences", headers=customer.headers)).json()["items"]
    assert shown["status"] == "available"
    assert await _contributions(conn, vault, customer) == 0
    await _import(conn, vault, {sku: "discontinued"})
    assert await _contributions(conn, vault, customer) == 1


async def test_a_sku_new_to_the_catalogue_takes_the_customers_status_out_of_demand(
    client, conn, vault, new_customer
):
    """A product the catalogue did not know counts by its customer's status; once an import adds
    its SKU as available, it is the shop's fact and no longer counts."""
    customer = await new_customer()
    sku = fresh_sku()
    await grant(client, customer, "insights", ["product"])
    await keep(client, customer, {**_chinos(sku), "status": "discontinued"})
    assert await _contributions(conn, vault, customer) == 1
    await _import(conn, vault, {sku: "available"})
    assert await _contributions(conn, vault, customer) == 0


async def test_an_import_moving_many_skus_recounts_every_customer_keeping_them(
    client, conn, vault, new_customer
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
    await _import(conn, vault, dict.fromkeys(moved, "discontinued"))
    counted = {c.id: await _contributions(conn, vault, c) for c in customers}
    assert counted == expected
    assert sum(counted.values()) >= 10
    assert await conn.fetchval("SELECT count(*) FROM catalogue_moves") == 0
    # a customer who stops sharing is taken out, and stays out however the catalogue moves
    await withdraw(client, customers[0], "insights")
    await _import(conn, vault, dict.fromkeys(moved, "available"))
    await _import(conn, vault, dict.fromkeys(moved, "discontinued"))
    assert await _contributions(conn, vault, customers[0]) == 0
    assert await _contributions(conn, vault, customers[1]) == expected[customers[1].id]


async def test_an_import_stopped_before_its_recount_is_finished_by_the_next(
    client, conn, vault, new_customer
):
    """The batches commit before demand follows them: the moves are kept in the database, so an
    import that stopped in between (here: only its batch ran) is followed by the next import,
    even one that changes nothing."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "available")
    await grant(client, customer, "insights", ["product"])
    await keep(client, customer, _chinos(sku))
    row = ImportRow(sku=sku, name="Classic Chino", status="discontinued")
    await catalogue.import_batch(conn, [(1, row)], catalogue.ImportReport())
    assert await _contributions(conn, vault, customer) == 0
    await catalogue.import_rows(conn, vault, [], catalogue.ImportReport())
    assert await _contributions(conn, vault, customer) == 1


async def test_a_preference_written_without_its_sku_index_still_follows_an_import(
    client, conn, vault, new_customer
):
    """A row the previous release writes during a rollout has no index (or one made for the
    ciphertext it replaced): an import recounts its customer all the same, and the backfill
    `prefs migrate` runs indexes it."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "available")
    await grant(client, customer, "insights", ["product"])
    kept = await keep(client, customer, _chinos(sku))
    ids = (uuid.UUID(customer.id), uuid.UUID(kept["id"]))
    indexed = "SELECT sku_index FROM preferences WHERE customer_id = $1 AND preference_id = $2"
    made = await conn.fetchval(indexed, *ids)
    await conn.execute(
        "UPDATE preferences SET sku_index = NULL WHERE customer_id = $1 AND preference_id = $2",
        *ids,
    )
    await _import(conn, vault, {sku: "discontinued"})
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
