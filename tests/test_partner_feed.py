"""The partner feed: a partner polling with its cursor never misses a reorder and never sees one
twice, even while many reorders commit concurrently and out of order."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import asyncpg

from prefs import db
from prefs.reorders import service as reorders
from prefs.reorders.schemas import ReorderCreate
from tests.support.customer import bearer, grant, keep
from tests.support.partner import feed_page, partner_key, pull, reorder

WRITERS = 8
PER_WRITER = 25


class RolledBack(Exception):
    """Raised inside a writer's transaction to roll it back on purpose."""


async def test_a_polling_partner_sees_every_committed_reorder_exactly_once(
    client, conn, database, vault, new_customer
):
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    shoppers = []
    for _ in range(4):
        customer = await new_customer()
        preference = await keep(client, customer)
        await grant(client, customer, fulfiller, ["product", "attributes"])
        shoppers.append((customer, preference))

    committed: set[str] = set()
    rolled_back: set[str] = set()
    writers_done = asyncio.Event()

    async def writer(number: int) -> None:
        """25 reorders: some through the API, some in transactions held open for a while."""
        rng = random.Random(number)
        connection = await db.connect(database.url)
        try:
            for i in range(PER_WRITER):
                customer, preference = shoppers[(number + i) % len(shoppers)]
                style = (number + i) % 5
                if style == 0:
                    response = await reorder(client, customer, preference["id"], fulfiller)
                    assert response.status_code == 201, response.text
                    committed.add(response.json()["id"])
                    continue
                data = ReorderCreate(quantity=1 + i % 3, fulfiller=fulfiller)
                if style == 4 and i % 2:
                    # Created, held open while others commit after it, then rolled back.
                    try:
                        async with connection.transaction():
                            made = await reorders.create_for_customer(
                                connection,
                                vault,
                                uuid.UUID(customer.id),
                                uuid.UUID(preference["id"]),
                                data,
                            )
                            rolled_back.add(str(made.id))
                            await asyncio.sleep(rng.uniform(0.01, 0.15))
                            raise RolledBack
                    except RolledBack:
                        continue
                async with connection.transaction():
                    made = await reorders.create_for_customer(
                        connection, vault, uuid.UUID(customer.id), uuid.UUID(preference["id"]), data
                    )
                    # Held open: later transactions commit first, this one commits out of order.
                    await asyncio.sleep(rng.uniform(0.0, 0.2) if style in (1, 4) else 0)
                committed.add(str(made.id))
                await asyncio.sleep(rng.uniform(0, 0.01))
        finally:
            await connection.close()

    collected: list[str] = []
    pages = 0

    async def reader() -> None:
        nonlocal pages
        cursor: str | None = None
        while not writers_done.is_set():
            page = await feed_page(client, api_key, cursor, limit=7)
            collected.extend(item["id"] for item in page["items"])
            cursor = page["next"]
            pages += 1
            await asyncio.sleep(0.005)
        # After the writers: drain until everything committed has arrived (or time runs out).
        items, cursor = await pull(
            client, api_key, cursor, want=len(committed) - len(collected), patience=60
        )
        collected.extend(item["id"] for item in items)
        # One more poll: nothing else is waiting.
        collected.extend(item["id"] for item in (await feed_page(client, api_key, cursor))["items"])

    reading = asyncio.create_task(reader())
    started = time.monotonic()
    try:
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    finally:
        writers_done.set()
    await reading
    elapsed = time.monotonic() - started

    stored = {
        str(r["reorder_id"])
        for r in await conn.fetch(
            "SELECT reorder_id FROM reorders WHERE partner_id = $1", partner.partner_id
        )
    }
    assert rolled_back, "the test meant to roll some writers back"
    assert stored == committed
    assert not rolled_back & stored
    assert len(committed) + len(rolled_back) == WRITERS * PER_WRITER
    assert len(collected) == len(set(collected)), "a reorder was delivered twice"
    assert set(collected) == committed, (
        f"missed {len(committed - set(collected))}, unexpected {len(set(collected) - committed)}"
    )
    assert pages > 5, f"the reader polled only {pages} times in {elapsed:.1f}s: no real concurrency"


async def test_a_reorder_held_in_an_open_transaction_is_not_skipped_by_a_later_one(
    client, conn, database, vault, new_customer
):
    """The classic gap: B is placed after A started; a cursor handed out while A is open must
    not skip A. B waits for A's position to commit (the partner's counter is A's until then)."""
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, fulfiller, ["product"])
    data = ReorderCreate(quantity=1, fulfiller=fulfiller)

    slow: asyncpg.Connection = await db.connect(database.url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        try:
            early = await reorders.create_for_customer(
                slow, vault, uuid.UUID(customer.id), uuid.UUID(preference["id"]), data
            )
            late = asyncio.create_task(reorder(client, customer, preference["id"], fulfiller))
            await asyncio.sleep(0.3)
            page = await feed_page(client, api_key)
            # Nothing shows while the older transaction is open, however the later one fares.
            assert page["items"] == []
            cursor = page["next"]
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    finally:
        await slow.close()

    assert (await late).status_code == 201
    items, _ = await pull(client, api_key, cursor, want=2)
    assert [item["id"] for item in items] == [str(early.id), (await late).json()["id"]]


async def test_a_bad_cursor_is_a_400(client, conn):
    _, api_key = await partner_key(conn)
    for cursor in ("not-a-cursor", "MTI6bm90LWEtdXVpZA", "%%%"):
        response = await client.get(
            "/v1/partner/reorders", headers=bearer(api_key), params={"after": cursor}
        )
        assert response.status_code == 400, (cursor, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_empty_feed_hands_back_a_cursor_that_keeps_working(client, conn, new_customer):
    partner, api_key = await partner_key(conn)
    page = await feed_page(client, api_key)
    assert page["items"] == []
    cursor = page["next"]
    assert (await feed_page(client, api_key, cursor))["next"] == cursor

    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    placed = await reorder(client, customer, preference["id"], f"partner:{partner.partner_id}")
    items, _ = await pull(client, api_key, cursor)
    assert [item["id"] for item in items] == [placed.json()["id"]]
