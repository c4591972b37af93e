"""Feeds ordered by a position per recipient (migration 0015): the previous release's order is
kept for what it wrote, its cursors get a clear 410, and a page read while a cluster node has
not yet shown its part of a change neither skips nor repeats it."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest

from prefs import cursors, db, feeds
from prefs.errors import CursorRetired
from prefs.partners.service import encode_feed_cursor
from prefs.stores import service as stores
from prefs.stores.service import QUEUE_CURSOR_BEFORE, _queue_owner, encode_queue_cursor
from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.database import Database, admin, with_database
from tests.support.partner import partner_key, pull, reorder
from tests.support.stores import drain, queue
from tests.test_stores import placed, store_with_till

STORE_REORDER = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, store_id, origin,
                      quantity, state, fields)
VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'store:' || $2, $2, 'customer', 1, 'requested',
        '{product}')
"""
# where each reorder stands in its store's queue (the migration numbers the reorders that exist
# in feed_entries only; a reorder's own feed_position is set when it next changes)
POSITIONS = """
SELECT e.reorder_id, e.position - n.base, r.feed_position - n.base
FROM feed_entries e JOIN reorders r USING (reorder_id), feed_numbering n
WHERE e.recipient = 'store:' || $1 ORDER BY e.position
"""
BASE = "SELECT base FROM feed_numbering"


@pytest.fixture
async def empty_database(database: Database) -> AsyncIterator[str]:
    name = f"prefs_feed_{secrets.token_hex(4)}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    try:
        yield with_database(database.server_url, name)
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_the_migration_numbers_each_queue_in_the_order_the_previous_release_served_it(
    empty_database,
):
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0014")
    conn = await db.connect(url)
    try:
        for store_id in ("0421", "0422"):
            await conn.execute("INSERT INTO stores (store_id, name) VALUES ($1, $1)", store_id)
        a, b, c, d = (uuid.uuid4() for _ in range(4))
        for reorder_id, store_id in ((a, "0421"), (b, "0421"), (c, "0422"), (d, "0421")):
            await conn.execute(STORE_REORDER, reorder_id, store_id)
        # a changes last, so the previous release's queue served it after b and d
        await conn.execute("UPDATE reorders SET state = 'accepted' WHERE reorder_id = $1", a)

        await asyncio.to_thread(db.migrate, url, "0015")
        base = await conn.fetchval(BASE)
        assert base >> feeds.NUMBERING_BITS in range(1, 2**22 + 1)
        assert base % 2**feeds.NUMBERING_BITS == 0
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0421")] == [
            (b, 1, None),
            (d, 2, None),
            (a, 3, None),
        ]
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0422")] == [(c, 1, None)]
        # the queue reads them in that order, as they stand
        rows, last = await feeds.page(conn, "store:0421", 0, 10, stores.QUEUE)
        assert [(r["reorder_id"], r["state"]) for r in rows] == [
            (b, "requested"),
            (d, "requested"),
            (a, "accepted"),
        ]
        assert last == base + 3
        # what comes next follows, in the right queue only
        await conn.execute("UPDATE reorders SET state = 'ready' WHERE reorder_id = $1", b)
        e = uuid.uuid4()
        await conn.execute(STORE_REORDER, e, "0422")
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0421")] == [
            (d, 2, None),
            (a, 3, None),
            (b, 4, 4),
        ]
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0422")] == [(c, 1, None), (e, 2, 2)]
        # deleting a store reorder with work left keeps it, cancelled, at a new position
        await conn.execute("DELETE FROM reorders WHERE reorder_id = $1", c)
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0422")] == [(e, 2, 2), (c, 3, 3)]
        entries = await conn.fetch(
            "SELECT recipient, position, reorder_id FROM feed_entries ORDER BY 1, 2"
        )
        assert [tuple(r) for r in entries] == [
            ("store:0421", base + 2, d),
            ("store:0421", base + 3, a),
            ("store:0421", base + 4, b),
            ("store:0422", base + 2, e),
            ("store:0422", base + 3, c),
        ]

        # Downgrading keeps the previous release's order up to date, and upgrading again
        # numbers everything afresh, under a numbering of its own.
        await asyncio.to_thread(db.downgrade, url, "0014")
        await conn.execute("UPDATE reorders SET state = 'accepted' WHERE reorder_id = $1", d)
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'feed_%'"
            )
            == 0
        )
        await asyncio.to_thread(db.migrate, url, "0015")
        again = await conn.fetchval(BASE)
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0421")] == [
            (a, 1, None),
            (b, 2, None),
            (d, 3, None),
        ]
        assert (
            await conn.fetchval("SELECT last FROM feed_positions WHERE recipient = 'store:0421'")
            == again + 3
        )
        # a list's first reorder starts its counter in the numbering too
        f = uuid.uuid4()
        await conn.execute("INSERT INTO stores (store_id, name) VALUES ('0423', '0423')")
        await conn.execute(STORE_REORDER, f, "0423")
        assert [tuple(r) for r in await conn.fetch(POSITIONS, "0423")] == [(f, 1, 1)]
    finally:
        await conn.close()


async def test_a_cursor_the_previous_release_handed_out_is_a_410_saying_start_again(
    client, conn, vault, new_customer
):
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, fulfiller, ["product"])
    placed_id = (await reorder(client, customer, preference["id"], fulfiller)).json()["id"]
    # what seal_xid made: a transaction id and a reorder id, sealed for the partner's feed
    before = cursors.seal(vault.page_cursors, "partner-feed", partner.partner_id, 731, uuid.uuid4())
    response = await client.get(
        "/v1/partner/reorders", headers=bearer(api_key), params={"after": before}
    )
    assert response.status_code == 410, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "without `after`" in response.json()["detail"]
    items, _ = await pull(client, api_key, want=1)  # starting again finds everything
    assert [item["id"] for item in items] == [placed_id]

    # another partner's old cursor is no more than a forgery: 400
    _, other_key = await partner_key(conn)
    response = await client.get(
        "/v1/partner/reorders", headers=bearer(other_key), params={"after": before}
    )
    assert response.status_code == 400, response.text

    store, till_key = await store_with_till(conn)
    customer = await new_customer()
    waiting = await placed(client, customer, await keep(client, customer, CHINOS), store)
    before = cursors.seal(
        vault.page_cursors, QUEUE_CURSOR_BEFORE, _queue_owner(store), 731, uuid.uuid4()
    )
    response = await queue(client, till_key, before)
    assert response.status_code == 410, response.text
    changes, _ = await drain(client, till_key)
    assert [change["id"] for change in changes] == [waiting["id"]]


async def test_a_cursor_of_an_earlier_numbering_is_a_410_saying_start_again(
    client, conn, vault, new_customer
):
    """What a partner or till holds from before a downgrade and upgrade of 0015 (the same list,
    numbered afresh): a position whose numbering is not the one its list counts in now."""
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, fulfiller, ["product"])
    placed_id = (await reorder(client, customer, preference["id"], fulfiller)).json()["id"]
    items, current = await pull(client, api_key, want=1)
    assert [item["id"] for item in items] == [placed_id]
    last = await conn.fetchval(feeds.COUNTER, fulfiller)
    earlier = last ^ (1 << feeds.NUMBERING_BITS)  # the same place, another numbering
    before = encode_feed_cursor(vault, partner.partner_id, earlier)
    response = await client.get(
        "/v1/partner/reorders", headers=bearer(api_key), params={"after": before}
    )
    assert response.status_code == 410, response.text
    assert response.json()["type"].endswith("cursor-retired")
    assert "without `after`" in response.json()["detail"]
    # the cursor of the numbering in force goes on as before
    response = await client.get(
        "/v1/partner/reorders", headers=bearer(api_key), params={"after": current}
    )
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []

    store, till_key = await store_with_till(conn)
    customer = await new_customer()
    waiting = await placed(client, customer, await keep(client, customer, CHINOS), store)
    changes, current = await drain(client, till_key)
    assert [change["id"] for change in changes] == [waiting["id"]]
    last = await conn.fetchval(feeds.COUNTER, feeds.store(store))
    response = await queue(
        client, till_key, encode_queue_cursor(vault, store, last ^ (1 << feeds.NUMBERING_BITS))
    )
    assert response.status_code == 410, response.text
    assert response.json()["type"].endswith("cursor-retired")
    assert (await queue(client, till_key, current)).status_code == 200


def _entry(position: int, reorder_id: uuid.UUID) -> dict[str, object]:
    return {"position": position, "reorder_id": reorder_id, "customer_id": uuid.uuid4()}


def _row(reorder_id: uuid.UUID, position: int, to: str = "store:1") -> dict[str, object]:
    return {"reorder_id": reorder_id, "feed_position": position, "fulfiller": to}


def test_a_page_ends_before_a_change_its_node_has_not_shown_yet_and_skips_one_moved_on():
    """On a cluster the entry (with the recipient) and the reorder (with the customer) become
    visible one after the other; the page must neither skip nor repeat a change."""
    a, b, c, d, e = (uuid.uuid4() for _ in range(5))
    entries = [_entry(3, a), _entry(4, b), _entry(5, c), _entry(6, d), _entry(7, e)]
    rows = [
        _row(a, 3),
        _row(b, 9),  # moved on to position 9: it comes again there
        _row(c, 5, to="store:2"),  # addressed to another store since
        _row(d, 4),  # its node still shows the reorder before this change: wait for it
        _row(e, 7),
    ]
    shown, used = feeds.in_order("store:1", entries, rows)  # type: ignore[arg-type]
    assert [row["reorder_id"] for row in shown] == [a]
    assert used == 3  # the cursor stops after c, before d
    shown, used = feeds.in_order("store:1", entries, [r for r in rows if r["reorder_id"] != d])  # type: ignore[arg-type]
    assert [row["reorder_id"] for row in shown] == [a] and used == 3  # not there yet (or gone)
    shown, used = feeds.in_order("store:1", entries, [*rows[:3], _row(d, 6), rows[4]])  # type: ignore[arg-type]
    assert [row["reorder_id"] for row in shown] == [a, d, e] and used == 5


@pytest.mark.parametrize("held", [0, 1])
async def test_an_erasure_and_a_till_moving_one_of_its_reorders_wait_for_each_other(
    client, conn, database, new_customer, held
):
    """A till holds one of the customer's store reorders (as set_status does) and then moves
    it, which takes the store's counter; the erasure, meanwhile, closes every one of the
    customer's store reorders. Neither may deadlock the other."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, till_key = await store_with_till(conn)
    made = [(await placed(client, customer, chinos, store))["id"] for _ in range(2)]
    _, cursor = await drain(client, till_key)
    moved = made[held]

    till = await db.connect(database.url)
    try:
        async with till.transaction():
            await till.execute(
                "SELECT 1 FROM reorders WHERE reorder_id = $1 FOR UPDATE", uuid.UUID(moved)
            )
            erasure = asyncio.create_task(client.delete("/v1/me", headers=customer.headers))
            await asyncio.sleep(0.5)  # the erasure is under way, waiting for the till's row
            await till.execute(
                "UPDATE reorders SET state = 'accepted', updated_at = now() "
                "WHERE customer_id = $1 AND reorder_id = $2",
                uuid.UUID(customer.id),
                uuid.UUID(moved),
            )
    finally:
        await till.close()
    assert (await erasure).status_code == 204
    # the till's move committed first; the queue shows where each reorder ended, once
    changes, _ = await drain(client, till_key, cursor)
    assert sorted((c["id"], c["state"]) for c in changes) == sorted(
        (reorder_id, "cancelled") for reorder_id in made
    )


async def test_a_cursor_from_before_a_downgrade_skips_nothing_after_upgrading_again(
    empty_database,
):
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0015")
    conn = await db.connect(url)
    try:
        await conn.execute("INSERT INTO stores (store_id, name) VALUES ('0421', '0421')")
        a = uuid.uuid4()
        await conn.execute(STORE_REORDER, a, "0421")
        for state in ("accepted", "ready"):  # each change takes the next position
            await conn.execute("UPDATE reorders SET state = $2 WHERE reorder_id = $1", a, state)
        rows, cursor = await feeds.page(conn, "store:0421", 0, 10, stores.QUEUE)
        assert [r["reorder_id"] for r in rows] == [a]
        assert cursor == await conn.fetchval(BASE) + 3

        # the release is rolled back and forward again; the till polls only afterwards
        await asyncio.to_thread(db.downgrade, url, "0014")
        await asyncio.to_thread(db.migrate, url, "0015")
        b = uuid.uuid4()
        await conn.execute(STORE_REORDER, b, "0421")
        # the old cursor names no place in the list as it is numbered now: start again
        with pytest.raises(CursorRetired):
            await feeds.page(conn, "store:0421", cursor, 10, stores.QUEUE)
        rows, _ = await feeds.page(conn, "store:0421", 0, 10, stores.QUEUE)
        assert [r["reorder_id"] for r in rows] == [a, b]
        # a store with no reorder since the round trip has no counter: its old cursors are
        # retired too
        with pytest.raises(CursorRetired):
            await feeds.page(conn, "store:0999", cursor, 10, stores.QUEUE)
    finally:
        await conn.close()
