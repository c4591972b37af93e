"""What a hostile review of stores and their queue found (each test failed before its fix):
bad search text, the note a customer did not choose to show, erasure and the queue, a rolling
deploy's erasures, and migration 0014 on what previous releases wrote.

Real database, real HTTP, as the rest of the suite.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from prefs import db
from prefs.errors import InvalidInput
from prefs.reorders.schemas import ReorderCreate
from prefs.stores import service as stores
from tests.support.customer import CHINOS, grant, keep
from tests.support.database import Database, admin, with_database
from tests.support.partner import reorder
from tests.support.stores import drain, in_directory, move
from tests.support.till import till_key

PROBLEM_JSON = "application/problem+json"


async def store_with_till(conn: Any) -> tuple[str, str]:
    store = await in_directory(conn)
    _, key = await till_key(conn, store)
    return store, key


async def placed(client: Any, customer: Any, preference: dict[str, Any], store: str) -> str:
    response = await reorder(client, customer, preference["id"], f"store:{store}")
    assert response.status_code == 201, response.text
    reorder_id: str = response.json()["id"]
    return reorder_id


# -- bad input must be a 4xx problem, never a 500 ------------------------------------------------


async def test_a_nul_character_in_the_store_search_is_a_400_not_a_500(client, new_customer):
    """GET /v1/stores?q=%00: PostgreSQL cannot hold U+0000; the search refuses it first."""
    customer = await new_customer()
    for q in ("\x00", "oxford\x00street"):
        response = await client.get("/v1/stores", headers=customer.headers, params={"q": q})
        assert response.status_code == 400, (q, response.status_code, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_JSON)


# -- disclosure beyond what the customer chose ---------------------------------------------------


async def test_a_store_does_not_see_the_note_the_customer_withheld_from_tills(
    client, conn, new_customer
):
    """The customer lets tills see product and attributes, not their note; a store reorder shows
    the store what finding the item needs, and the note only when the customer adds it."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    await grant(client, customer, "pos", ["product", "attributes"])
    store, key = await store_with_till(conn)
    await placed(client, customer, chinos, store)

    items, _ = await drain(client, key)
    [item] = items
    assert item["item"]["product"] == CHINOS["product"]  # what the store needs to fetch it
    assert "note" not in item["fields"], item["fields"]
    assert CHINOS["note"] not in str(item), "the store's till reads the note the customer withheld"


# -- erasure ------------------------------------------------------------------------------------


async def test_erasure_does_not_put_a_reorder_the_store_already_finished_back_in_its_queue(
    client, conn, new_customer
):
    """A reorder the store handed over (collected) does not come back in its queue when the
    customer erases their account: the store saw it end, and learns nothing of the erasure."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    reorder_id = await placed(client, customer, chinos, store)
    for state in ("accepted", "ready", "collected"):
        assert (await move(client, key, reorder_id, state)).status_code == 200
    seen, cursor = await drain(client, key)
    assert [(i["id"], i["state"]) for i in seen] == [(reorder_id, "collected")]

    assert (await client.delete("/v1/me", headers=customer.headers)).status_code == 204

    again, _ = await drain(client, key, cursor)
    assert again == [], f"the queue showed a finished reorder again after erasure: {again}"


async def test_erasure_keeps_no_plaintext_record_of_where_and_when_a_customer_collected(
    client, conn, new_customer
):
    """Privacy guarantee 5: when and at which store a customer's data was shown goes with the
    data key. What the store finished itself (collected, declined) is not kept after erasure."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    collected = await placed(client, customer, chinos, store)
    declined = await placed(client, customer, chinos, store)
    for state in ("accepted", "ready", "collected"):
        assert (await move(client, key, collected, state)).status_code == 200
    assert (await move(client, key, declined, "declined")).status_code == 200
    await drain(client, key)  # the store has seen both end

    assert (await client.delete("/v1/me", headers=customer.headers)).status_code == 204

    left = await conn.fetch(
        "SELECT reorder_id, store_id, state, updated_at FROM reorders WHERE customer_id = $1",
        uuid.UUID(customer.id),
    )
    assert [tuple(r) for r in left] == [], "visits kept in clear after erasure"


# -- a rolling deploy: the previous release's code on this schema --------------------------------

# The previous release's erasure (git show HEAD~4:src/prefs/rights/service.py), which still runs
# on the new schema during a rolling deploy (migration 0014's note says the previous release runs
# on it).
PREVIOUS_CLOSE_ACCEPTED = """
UPDATE reorders SET state = 'cancelled', snapshot_ct = NULL, updated_at = now()
WHERE customer_id = $1 AND state = 'accepted'
"""
PREVIOUS_SHRED = [
    "DELETE FROM customer_keys WHERE customer_id = $1",
    "DELETE FROM customer_subjects WHERE customer_id = $1",
    "DELETE FROM card_index WHERE customer_id = $1",
    "DELETE FROM card_claims WHERE customer_id = $1",
    "DELETE FROM checkout_codes WHERE customer_id = $1",
    "DELETE FROM consents WHERE customer_id = $1",
    "DELETE FROM consent_ledger WHERE customer_id = $1",
    "DELETE FROM partner_preference_refs WHERE customer_id = $1",
    "DELETE FROM preferences WHERE customer_id = $1",
    "DELETE FROM reorders WHERE customer_id = $1 AND snapshot_ct IS NOT NULL",
    "DELETE FROM partner_refs WHERE customer_id = $1",
    "DELETE FROM idempotency_keys WHERE customer_id = $1",
    "DELETE FROM access_log WHERE customer_id = $1",
    "DELETE FROM customers WHERE customer_id = $1",
]


async def test_an_erasure_by_the_previous_release_does_not_leave_the_store_working_a_ghost(
    client, conn, new_customer
):
    """During the rollout, an erasure served by the previous release deletes store reorders that
    are requested or ready; the store's queue must still show them end (a trigger keeps a
    deleted store reorder with work left as cancelled, without its snapshot)."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    waiting = await placed(client, customer, chinos, store)
    ready = await placed(client, customer, chinos, store)
    for state in ("accepted", "ready"):
        assert (await move(client, key, ready, state)).status_code == 200
    _, cursor = await drain(client, key)

    customer_id = uuid.UUID(customer.id)
    async with conn.transaction():
        await conn.execute("SET LOCAL prefs.erasure = 'on'")
        await conn.execute(PREVIOUS_CLOSE_ACCEPTED, customer_id)
        for statement in PREVIOUS_SHRED:
            await conn.execute(statement, customer_id)

    changes, _ = await drain(client, key, cursor)
    assert sorted((c["id"], c["state"]) for c in changes) == sorted(
        [(waiting, "cancelled"), (ready, "cancelled")]
    ), f"the store was never told: its queue shows {changes}"


# -- migration 0014 on data the previous releases wrote ------------------------------------------


@pytest.fixture
async def empty_database(database: Database) -> AsyncIterator[str]:
    name = f"prefs_review16_{secrets.token_hex(4)}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    try:
        yield with_database(database.server_url, name)
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


TILL_AT = """
INSERT INTO credentials (credential_id, kind, key_hash, display_name, store, revoked_at)
VALUES (gen_random_uuid(), 'pos', $1, 'Till 1', $2, $3)
"""
LEGACY_REORDER = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, origin, quantity, state,
                      fields)
VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'store', 'customer', 1, $2, '{product}')
"""
STORE_REORDER = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, store_id, origin,
                      quantity, state, fields)
VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'store:' || $3, $3, 'customer', 1, $2,
        '{product}')
"""


@pytest.mark.parametrize("legacy", ["", "x" * 65])
async def test_the_migration_runs_over_any_store_a_previous_release_let_a_till_key_name(
    empty_database, legacy
):
    """The previous `prefs credentials create --store` took any text (an empty string, 65+
    characters); migration 0014 must still go ahead."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0013")
    conn = await db.connect(url)
    try:
        await conn.execute(TILL_AT, secrets.token_bytes(32), legacy, None)
    finally:
        await conn.close()
    await asyncio.to_thread(db.migrate, url, "0014")


async def test_every_store_the_migration_lists_can_be_reordered_from_and_renamed(empty_database):
    """A till key made by the previous release for store "0421 Oxford St" must not bring into the
    directory an id customers cannot reorder from (`store:0421 Oxford St` fails the fulfiller
    pattern) and the operator cannot rename."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0013")
    conn = await db.connect(url)
    try:
        await conn.execute(TILL_AT, secrets.token_bytes(32), "0421 Oxford St", None)
        await asyncio.to_thread(db.migrate, url, "0014")
        listed = [r["store_id"] for r in await conn.fetch("SELECT store_id FROM stores")]
        named = await conn.fetchval("SELECT name FROM stores")
        tills = [r["store"] for r in await conn.fetch("SELECT store FROM credentials")]
    finally:
        await conn.close()
    # a new id by the directory's rule, on the till key too; the old text kept in the name
    assert len(listed) == 1 and listed[0].startswith("legacy-") and tills == listed
    assert named == "Store 0421 Oxford St"
    unreachable = []
    for store_id in listed:
        try:
            msgspec.convert({"quantity": 1, "fulfiller": f"store:{store_id}"}, ReorderCreate)
            stores.entry(store_id, "Oxford Street")
        except (msgspec.ValidationError, InvalidInput) as error:
            unreachable.append(f"{store_id!r}: {error}")
    assert not unreachable, unreachable


async def test_the_migration_sends_waiting_reorders_only_to_a_store_a_till_can_still_read(
    empty_database,
):
    """A store whose every till key was revoked (a store long gone) comes in closed, and is not
    "the only store" a waiting legacy reorder is sent to."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0013")
    conn = await db.connect(url)
    try:
        revoked = datetime(2024, 1, 1, tzinfo=UTC)
        await conn.execute(TILL_AT, secrets.token_bytes(32), "0999", revoked)
        waiting = uuid.uuid4()
        await conn.execute(LEGACY_REORDER, waiting, "requested")
        await asyncio.to_thread(db.migrate, url, "0014")
        gone = await conn.fetchrow("SELECT closed_at FROM stores WHERE store_id = '0999'")
        moved = await conn.fetchrow(
            "SELECT store_id, state FROM reorders WHERE reorder_id = $1", waiting
        )
    finally:
        await conn.close()
    assert tuple(moved) != ("0999", "requested"), "sent to a store no till can read"
    assert gone is None or gone["closed_at"] is not None, "a store with no live till key is open"


async def test_downgrading_and_upgrading_again_strands_no_reorder(empty_database):
    """Downgrading 0014 forgets which store each reorder names (the previous schema cannot hold
    it; the migration's note says so). Upgrading again must not leave one that nobody can act
    on: with several stores, waiting and accepted ones are cancelled (the page says they named
    no store), and none stays open without a store."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0014")
    conn = await db.connect(url)
    try:
        for store_id in ("0421", "0422"):
            await conn.execute("INSERT INTO stores (store_id, name) VALUES ($1, $1)", store_id)
        requested, ready = uuid.uuid4(), uuid.uuid4()
        await conn.execute(STORE_REORDER, requested, "requested", "0421")
        await conn.execute(STORE_REORDER, ready, "ready", "0422")

        await asyncio.to_thread(db.downgrade, url, "0013")
        await asyncio.to_thread(db.migrate, url, "0014")
        after = {
            r["reorder_id"]: (r["fulfiller"], r["state"])
            for r in await conn.fetch("SELECT reorder_id, fulfiller, state FROM reorders")
        }
    finally:
        await conn.close()
    assert after == {requested: ("store", "cancelled"), ready: ("store", "cancelled")}
