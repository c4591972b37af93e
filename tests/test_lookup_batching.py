"""Group commit at the till: lookups that share one statement and one commit each get their own
answer and their own access-log record, and one lookup's failure or cancellation is not another's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from msgspec import UNSET

from prefs import credentials, db
from prefs.crypto import DecryptionError, api_key_hash
from prefs.disclosures import INSERT_SEALED
from prefs.errors import NotFound, Unauthenticated, Unavailable
from prefs.pos.schemas import LookupResult
from prefs.pos.service import (
    LOOKUP,
    LOOKUP_CARDS,
    LOOKUP_LOCAL_SETTINGS,
    LOOKUP_ROUTED,
    LOOKUP_SERVER_SETTINGS,
    ROUTE,
    LookupBatcher,
    _arguments,
    lookup,
)
from prefs.throttle import ThrottledTills
from tests.support.customer import checkout_code, grant, keep
from tests.support.stores import fresh_store
from tests.support.till import disclosures, fresh_card, shopper, till_key, visits


@pytest.fixture
async def pool(database) -> AsyncIterator[asyncpg.Pool]:
    connections = await db.create_pool(database.url, 1, 2, LOOKUP_SERVER_SETTINGS)
    yield connections
    await connections.close()


def plain(card: str) -> str:
    return card.replace(" ", "")


async def granted_shoppers(
    client, conn, new_customer, count: int
) -> tuple[str, list[tuple[Any, str, list[dict[str, Any]]]]]:
    """A new till key, and ``count`` shoppers who let tills see everything."""
    _, key = await till_key(conn)
    shoppers = [await shopper(new_customer, client) for _ in range(count)]
    for customer, _, _ in shoppers:
        await grant(client, customer)
    return key, shoppers


async def idle(batcher: LookupBatcher) -> None:
    """Return once the batcher's tasks have ended (an answer can come before its task ends)."""
    if batcher.tasks:
        await asyncio.wait(set(batcher.tasks))


async def until_a_batch_waits_for_a_lock(conn: asyncpg.Connection) -> None:
    """Return once a batch's statement (the lookup, or the insert of its access-log records) is
    waiting for a lock at the database."""
    for _ in range(1000):
        # the activity view is read once per transaction, and ``conn`` may be in one (holding
        # the lock): read it afresh each time
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        if await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND EXISTS (SELECT FROM unnest($1::text[]) s WHERE starts_with(query, s))",
            # the activity view keeps only the start of a long statement
            [statement[:200] for statement in (LOOKUP, LOOKUP_ROUTED, INSERT_SEALED)],
        ):
            return
        await asyncio.sleep(0.01)
    pytest.fail("the lookup never reached the database")


@contextlib.asynccontextmanager
async def access_log_refusing(conn: asyncpg.Connection, customer_id: str) -> AsyncIterator[None]:
    """While in the block, the database refuses (RAISE) any access-log record of the customer:
    the error of one lookup's data, not of its batch."""
    trigger = f"refuse_{uuid.uuid4().hex}"
    await conn.execute(
        f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.customer_id = '{customer_id}' THEN RAISE EXCEPTION 'refused for the test'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER {trigger} BEFORE INSERT ON access_log
            FOR EACH ROW EXECUTE FUNCTION {trigger}();
        """
    )
    try:
        yield
    finally:
        await conn.execute(f"DROP TRIGGER {trigger} ON access_log; DROP FUNCTION {trigger}()")


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_lookups_sent_together_share_a_statement_and_each_gets_its_own_answer(
    client, conn, new_customer, pool, vault, in_flight, routed
):
    _, key = await till_key(conn, fresh_store())
    revoked, revoked_key = await till_key(conn)
    await credentials.revoke(conn, revoked.id)
    everything = [await shopper(new_customer, client) for _ in range(3)]
    for customer, _, _ in everything:
        await grant(client, customer)
    product_only, product_only_card, _ = await shopper(new_customer, client)
    await grant(client, product_only, fields=["product"])
    ungranted, ungranted_card, _ = await shopper(new_customer, client)
    coded, _, coded_kept = await shopper(new_customer, client)
    code = (await checkout_code(client, coded, fields=["note"]))["code"]

    batcher = LookupBatcher(
        pool, 64, in_flight, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
    )
    throttle = ThrottledTills()
    cards = [plain(card) for _, card, _ in everything]
    answers = await asyncio.gather(
        *(lookup(batcher, vault, throttle, key, card, None) for card in cards),
        lookup(batcher, vault, throttle, key, cards[-1], None),  # the same card twice
        lookup(batcher, vault, throttle, key, plain(product_only_card), None),
        lookup(batcher, vault, throttle, key, plain(ungranted_card), None),
        lookup(batcher, vault, throttle, key, None, code),
        lookup(batcher, vault, throttle, revoked_key, cards[0], None),
        lookup(batcher, vault, throttle, key, plain(fresh_card()), None),
        return_exceptions=True,
    )
    assert batcher.statements == 1  # they went together

    *full, twice, product, missing, by_code, wrong_key, unknown = answers
    for (_, _, kept), answer in zip(everything, full, strict=True):
        assert isinstance(answer, LookupResult)
        assert [p.rank for p in answer.preferences] == list(range(1, len(kept) + 1))
        assert [p.product.name for p in answer.preferences] == [  # type: ignore[union-attr]
            p["product"]["name"] for p in kept
        ]
    for (customer, _, kept), answers_for in zip(
        everything, [[full[0]], [full[1]], [full[2], twice]], strict=True
    ):
        logged = await visits(conn, vault, customer.id)
        assert sorted(
            (r["disclosure_id"], r["via"], r["preference_ids"], r["fields"]) for r in logged
        ) == sorted(
            (a.disclosure_id, "card", [uuid.UUID(p["id"]) for p in kept], a.fields)
            for a in answers_for
            if isinstance(a, LookupResult)
        )
    assert isinstance(twice, LookupResult) and twice.disclosure_id != full[2].disclosure_id
    assert isinstance(product, LookupResult)
    assert product.fields == ["product"]
    assert all(p.product and p.attributes is UNSET and p.note is UNSET for p in product.preferences)
    assert isinstance(by_code, LookupResult) and by_code.via == "code"
    assert [p.note for p in by_code.preferences] == [p.get("note") for p in coded_kept]
    assert all(p.product is UNSET and p.attributes is UNSET for p in by_code.preferences)
    assert isinstance(missing, NotFound) and isinstance(unknown, NotFound)
    assert isinstance(wrong_key, Unauthenticated)
    assert await disclosures(conn, ungranted.id) == 0
    assert await disclosures(conn, product_only.id) == 1
    assert await disclosures(conn, coded.id) == 1
    assert await disclosures(conn, everything[0][0].id) == 1  # the revoked key's try added none
    assert await disclosures(conn, everything[2][0].id) == 2  # one record per answer


async def test_one_lookup_the_database_refuses_fails_alone(
    client, conn, new_customer, pool, vault, routed
):
    _, key = await till_key(conn)
    good = [await shopper(new_customer, client) for _ in range(3)]
    bad, bad_card, _ = await shopper(new_customer, client)
    for customer, _, _ in [*good, (bad, bad_card, None)]:
        await grant(client, customer)
    async with access_log_refusing(conn, bad.id):
        batcher = LookupBatcher(
            pool, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
        )
        throttle = ThrottledTills()
        answers = await asyncio.gather(
            *(lookup(batcher, vault, throttle, key, plain(c), None) for _, c, _ in good),
            lookup(batcher, vault, throttle, key, plain(bad_card), None),
            return_exceptions=True,
        )
    *fine, refused = answers
    assert isinstance(refused, asyncpg.RaiseError)
    assert await disclosures(conn, bad.id) == 0
    for (customer, _, _), answer in zip(good, fine, strict=True):
        assert isinstance(answer, LookupResult)
        assert await disclosures(conn, customer.id) == 1
    assert batcher.statements == 1 + len(answers)  # the shared try, then each alone


async def test_a_lookup_whose_data_key_cannot_be_unwrapped_fails_alone_and_unlogged(
    client, conn, new_customer, pool, vault, routed
):
    key, shoppers = await granted_shoppers(client, conn, new_customer, 3)
    (broken, _, _), *fine = shoppers
    broken_id = uuid.UUID(broken.id)
    wrapped = await conn.fetchval(
        "SELECT wrapped FROM customer_keys WHERE customer_id = $1", broken_id
    )
    await conn.execute(  # its wrap no longer authenticates (a damaged or foreign key row)
        "UPDATE customer_keys SET wrapped = overlay(wrapped placing '\\x00'::bytea from 20)"
        " WHERE customer_id = $1",
        broken_id,
    )
    try:
        batcher = LookupBatcher(
            pool, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
        )
        throttle = ThrottledTills()
        answers = await asyncio.gather(
            *(lookup(batcher, vault, throttle, key, plain(c), None) for _, c, _ in shoppers),
            return_exceptions=True,
        )
    finally:  # the session's other tests (a reindexing, the purge) read every customer's key
        await conn.execute(
            "UPDATE customer_keys SET wrapped = $2 WHERE customer_id = $1", broken_id, wrapped
        )
    assert isinstance(answers[0], DecryptionError)
    assert await disclosures(conn, broken.id) == 0  # nothing shown, nothing to keep
    for (customer, _, _), answer in zip(fine, answers[1:], strict=True):
        assert isinstance(answer, LookupResult)
        assert await disclosures(conn, customer.id) == 1
    assert batcher.statements == 1


async def test_no_lookup_is_answered_before_its_access_log_record_is_committed(
    client, conn, new_customer, pool, vault, routed
):
    """The batch opens its hits' answers while their records are being inserted: none may be
    handed over until the insert has returned, and a batch whose insert waits holds them all."""
    key, shoppers = await granted_shoppers(client, conn, new_customer, 3)
    batcher = LookupBatcher(
        pool, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
    )
    throttle = ThrottledTills()
    await conn.execute("BEGIN; LOCK TABLE access_log IN EXCLUSIVE MODE")
    try:
        waiting = [
            asyncio.create_task(lookup(batcher, vault, throttle, key, plain(card), None))
            for _, card, _ in shoppers
        ]
        await until_a_batch_waits_for_a_lock(conn)
        await asyncio.sleep(0.2)  # time enough for an answer to get out, were it let out
        assert not any(task.done() for task in waiting)
        for customer, _, _ in shoppers:
            assert await disclosures(conn, customer.id) == 0
    finally:
        await conn.execute("COMMIT")
    answers = await asyncio.gather(*waiting)
    for (customer, _, _), answer in zip(shoppers, answers, strict=True):
        assert isinstance(answer, LookupResult) and answer.preferences
        assert await disclosures(conn, customer.id) == 1
    assert batcher.statements == 1


@pytest.mark.parametrize("per_transaction", [False, True], ids=["session", "pooler"])
async def test_the_till_is_shown_each_products_own_catalogue_status(
    client, conn, new_customer, database, vault, routed, per_transaction
):
    """A batch reads the catalogue's statuses on its own connection, where sequential scans are
    off (LOOKUP_SERVER_SETTINGS, or SET LOCAL behind a pooler): a vacuumed catalogue's SKUs then
    come by their index, in SKU order, whatever order its rows lie in. The statuses must come in
    the same order as the SKUs, or a product is shown another one's status."""
    prefix = f"ZZ-{uuid.uuid4().hex[:8]}-"
    skus = [f"{prefix}{n:02}" for n in range(12)]
    status = {sku: "discontinued" if n % 2 else "available" for n, sku in enumerate(skus)}
    await conn.execute(  # the rows lie in the reverse of SKU order
        "INSERT INTO catalogue_products (sku, name, status)"
        " SELECT s, 'Chino', t FROM unnest($1::text[], $2::text[]) AS r(s, t)",
        skus[::-1],
        [status[sku] for sku in skus[::-1]],
    )
    await conn.execute("UPDATE catalogue_state SET version = version + 1")
    await conn.execute("VACUUM (ANALYZE) catalogue_products")  # all visible: index-only scans
    settings = None if per_transaction else LOOKUP_SERVER_SETTINGS
    one = await db.create_pool(database.url, 1, 1, settings)
    try:
        card = fresh_card()
        customer = await new_customer(card=card)
        for sku in skus:
            await keep(
                client,
                customer,
                {"product": {"sku": sku, "name": "Chino"}, "attributes": {}, "status": status[sku]},
            )
        await grant(client, customer)
        _, key = await till_key(conn)
        batcher = LookupBatcher(
            one, vault=vault, routed=routed, settings_per_transaction=per_transaction
        )
        answer = await lookup(batcher, vault, ThrottledTills(), key, plain(card), None)
        assert isinstance(answer, LookupResult)
        shown = {p.product.sku: p.status for p in answer.preferences}  # type: ignore[union-attr]
        assert shown == status
    finally:
        await one.close()
        await conn.execute("DELETE FROM catalogue_products WHERE starts_with(sku, $1)", prefix)
        await conn.execute("UPDATE catalogue_state SET version = version + 1")


async def test_a_lookup_cancelled_before_its_batch_is_not_sent_and_the_next_ones_are_answered(
    client, conn, new_customer, pool, vault, routed
):
    _, key = await till_key(conn)
    (first, first_card, _), (second, second_card, _) = [
        await shopper(new_customer, client) for _ in range(2)
    ]
    await grant(client, first)
    await grant(client, second)
    batcher = LookupBatcher(
        pool, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
    )
    throttle = ThrottledTills()
    kept = asyncio.create_task(lookup(batcher, vault, throttle, key, plain(first_card), None))
    dropped = asyncio.create_task(lookup(batcher, vault, throttle, key, plain(second_card), None))
    await asyncio.sleep(0)  # both are queued, no batch has been sent yet
    dropped.cancel()
    assert isinstance(await kept, LookupResult)
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert await disclosures(conn, first.id) == 1
    assert await disclosures(conn, second.id) == 0  # nobody was there to be shown anything
    again = await lookup(batcher, vault, throttle, key, plain(second_card), None)
    assert isinstance(again, LookupResult)
    assert await disclosures(conn, second.id) == 1
    await idle(batcher)
    assert batcher.running == 0 and not batcher.queue


async def test_a_lookup_cancelled_while_its_batch_runs_keeps_its_record(
    client, conn, new_customer, pool, vault, routed
):
    _, key = await till_key(conn)
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    batcher = LookupBatcher(
        pool, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
    )
    throttle = ThrottledTills()
    # holds the batch at the database for a moment (on the test's own connection: what the
    # lookup pool sends is checked for the cluster, tests/test_cluster_readiness.py)
    await conn.execute("BEGIN; LOCK TABLE access_log IN EXCLUSIVE MODE")
    try:
        dropped = asyncio.create_task(lookup(batcher, vault, throttle, key, plain(card), None))
        await until_a_batch_waits_for_a_lock(conn)
        dropped.cancel()
    finally:
        await conn.execute("COMMIT")
    with pytest.raises(asyncio.CancelledError):
        await dropped
    await idle(batcher)
    assert await disclosures(conn, customer.id) == 1  # the statement ran: its record is kept


async def test_the_lookup_statement_is_planned_once_and_kept(
    client, conn, new_customer, database, vault, routed
):
    _, key = await till_key(conn)
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    one = await db.create_pool(database.url, 1, 1, LOOKUP_SERVER_SETTINGS)  # one connection
    try:
        batcher = LookupBatcher(
            one, 64, 1, misses_per_key=1000, misses_per_store=1000, vault=vault, routed=routed
        )
        throttle = ThrottledTills()
        code = (await checkout_code(client, customer))["code"]
        for _ in range(8):
            answer = await lookup(batcher, vault, throttle, key, plain(card), None)
            assert isinstance(answer, LookupResult)
            answer = await lookup(batcher, vault, throttle, key, None, code)
            assert isinstance(answer, LookupResult)
        async with one.acquire() as lookup_conn:
            plans = await lookup_conn.fetch(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement = ANY($1::text[])",
                [ROUTE, LOOKUP_ROUTED] if routed else [LOOKUP, LOOKUP_CARDS],
            )
    finally:
        await one.close()
    # the route and the lookup, or the one lookup (for a batch of cards only, LOOKUP_CARDS)
    assert len(plans) == 2
    assert all(p["custom_plans"] == 0 and p["generic_plans"] >= 1 for p in plans)


async def generic_plan(
    conn: asyncpg.Connection, statement: str, types: list[str], *, tiny: bool = False
) -> Any:
    """The plan a lookup connection keeps for ``statement`` (EXPLAIN's, as JSON); ``tiny``: as
    planned while every table was nearly empty (the statistics say one row a page, rolled back
    afterwards), the worst case for a plan kept as long as its connection."""
    await conn.execute("BEGIN")
    try:
        await conn.execute(LOOKUP_LOCAL_SETTINGS)
        if tiny:
            await conn.execute(
                "UPDATE pg_class SET reltuples = 1, relpages = 1 "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            )
        await conn.execute(f"PREPARE planned({', '.join(types)}) AS {statement}")
        nulls = ", ".join(["NULL"] * len(types))
        explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE planned({nulls})")
        await conn.execute("DEALLOCATE planned")
    finally:
        await conn.execute("ROLLBACK")
    return json.loads(explained)[0]["Plan"]


def reads(plan: Any) -> list[tuple[str, str]]:
    """(table, index condition) of each table a plan reads; a sequential scan has none."""
    found = []
    if "Relation Name" in plan and plan["Node Type"] != "ModifyTable":
        bitmap = [child for child in plan.get("Plans", ()) if "Index Cond" in child]
        condition = plan.get("Index Cond") or (bitmap[0]["Index Cond"] if bitmap else "")
        found.append((plan["Relation Name"], " ".join(condition.split())))
    for child in plan.get("Plans", ()):
        found += reads(child)
    return found


# LOOKUP's parameters (LOOKUP_ROUTED's first eight)
LOOKUP_TYPES = ["int[]", "bytea[]", "int[]", "bytea[]", "int[]", "bytea[]", "int", "int"]


@pytest.mark.parametrize("codes", [True, False], ids=["LOOKUP", "LOOKUP_CARDS"])
@pytest.mark.parametrize("tiny", [False, True], ids=["as-the-tables-are", "tables-nearly-empty"])
async def test_the_one_lookup_statement_reaches_every_table_through_an_index(conn, tiny, codes):
    """LOOKUP (the layout single's) keeps its generic plan as long as its connection: every table
    it reads is reached through an index, however small the table was when the plan was made
    (but catalogue_state, one row). So does LOOKUP_CARDS, its form for a batch of cards only."""
    statement, types = (
        (LOOKUP, LOOKUP_TYPES) if codes else (LOOKUP_CARDS, [*LOOKUP_TYPES[:4], "int", "int"])
    )
    found = reads(await generic_plan(conn, statement, types, tiny=tiny))
    assert {table for table, _ in found} >= {
        "credentials",
        "key_misses",
        "store_misses",
        *(["checkout_codes"] if codes else []),
        "card_index",
        "consents",
        "customer_keys",
        "preferences",
    }, found
    assert [read for read in found if not read[1] and read[0] != "catalogue_state"] == []
    # found from what the till sent, never from every till grant: the card by its hash, then
    # the grant by the customer it names
    conditions = dict(found)
    assert "card_hash" in conditions["card_index"], found
    assert "customer_id" in conditions["consents"], found


async def test_what_a_batch_reads_by_hash_or_customer_is_one_index_scan_by_its_array(conn):
    """Each table the routed lookup (ROUTE, LOOKUP_ROUTED) finds by the batch's arrays is read once, by an index on its
    distribution column (= ANY of the array), however small the table was when the plan was
    made: not probed per lookup with the array beside, which sorts it again at every probe.
    The preferences are read per customer found, without the array."""
    route = reads(await generic_plan(conn, ROUTE, ["bytea[]"] * 3))
    assert sorted(route) == [
        ("card_index", "(card_hash = ANY ($2))"),
        ("checkout_codes", "(code_hash = ANY ($3))"),
        ("credentials", "(key_hash = ANY ($1))"),
    ]
    lookup = reads(await generic_plan(conn, LOOKUP_ROUTED, [*LOOKUP_TYPES, "uuid[]", "text[]"]))
    by_array = {
        "credentials": ["(key_hash = ANY ($2))"],
        "key_misses": ["(key_hash = ANY ($2))"],
        "store_misses": ["(store = ANY ($10))"],
        "card_index": ["(card_hash = ANY ($4))"],
        "consents": ["((customer_id = ANY ($9)) AND (audience = 'pos'::text))"],
        "checkout_codes": ["(code_hash = ANY ($6))"] * 2,  # read, then bound
        "customer_keys": ["(customer_id = ANY ($9))"] * 2,  # the data keys; the preferences
    }
    for table, conditions in by_array.items():
        assert sorted(c for t, c in lookup if t == table) == conditions, (table, lookup)
    [preferences] = [c for t, c in lookup if t == "preferences"]
    assert re.fullmatch(r"\(customer_id = dk\w*\.customer_id\)", preferences), preferences


async def test_a_card_that_moves_between_the_route_and_the_lookup_is_a_miss(
    client, conn, new_customer, vault
):
    """The route only narrows what the lookup reads: the lookup reads the card again, so its
    answer never comes from the route's older read (neither the card's former holder's
    preferences, nor those of a customer whose rows the route did not name)."""
    _, key = await till_key(conn)
    holder, card, _ = await shopper(new_customer, client)
    taker, _, _ = await shopper(new_customer, client)
    for customer in (holder, taker):
        await grant(client, customer)
    hashes = vault.index.all_digests("card", plain(card).encode())
    arguments = _arguments([(api_key_hash(key), hashes, ())])
    _, keys, _, cards, _, codes = arguments
    route = await conn.fetchrow(ROUTE, keys, cards, codes)
    assert route["customers"] == [uuid.UUID(holder.id)]
    await conn.execute(
        "UPDATE card_index SET customer_id = $1 WHERE card_hash = ANY($2::bytea[])",
        uuid.UUID(taker.id),
        hashes,
    )
    [row] = await conn.fetch(
        LOOKUP_ROUTED, *arguments, 1000, 1000, route["customers"], route["stores"]
    )
    assert row["counted_miss"]
    assert row["customer_id"] is None and row["disclosure_id"] is None and row["ids"] is None


@pytest.fixture
async def impatient_pool(database) -> AsyncIterator[asyncpg.Pool]:
    """Lookup connections that give up on a lock after 300 ms."""
    settings = {**LOOKUP_SERVER_SETTINGS, "lock_timeout": "300ms"}
    connections = await db.create_pool(database.url, 1, 2, settings)
    yield connections
    await connections.close()


async def test_a_batch_the_database_refuses_as_a_whole_fails_at_once_and_the_next_is_answered(
    client, conn, new_customer, impatient_pool, vault, routed
):
    key, shoppers = await granted_shoppers(client, conn, new_customer, 3)
    batcher = LookupBatcher(
        impatient_pool,
        64,
        1,
        misses_per_key=1000,
        misses_per_store=1000,
        vault=vault,
        routed=routed,
    )
    throttle = ThrottledTills()
    await conn.execute("BEGIN; LOCK TABLE access_log IN EXCLUSIVE MODE")
    try:
        answers = await asyncio.gather(
            *(lookup(batcher, vault, throttle, key, plain(c), None) for _, c, _ in shoppers),
            return_exceptions=True,
        )
    finally:
        await conn.execute("COMMIT")
    # a lock timeout is nobody's data: no lookup is retried alone, each gets its own error
    assert batcher.statements == 1
    assert all(isinstance(a, asyncpg.LockNotAvailableError) for a in answers)
    assert len({id(a) for a in answers}) == len(answers)
    await idle(batcher)
    assert batcher.running == 0 and not batcher.queue
    for customer, _, _ in shoppers:
        assert await disclosures(conn, customer.id) == 0
    again = await lookup(batcher, vault, throttle, key, plain(shoppers[0][1]), None)
    assert isinstance(again, LookupResult)
    assert await disclosures(conn, shoppers[0][0].id) == 1


async def test_stopping_mid_batch_answers_503_and_leaves_nothing_waiting(
    client, conn, new_customer, pool, vault, routed
):
    key, shoppers = await granted_shoppers(client, conn, new_customer, 2)
    batcher = LookupBatcher(
        pool, max_batch=1, in_flight=1, vault=vault, routed=routed
    )  # the second waits in the queue
    throttle = ThrottledTills()
    await conn.execute("BEGIN; LOCK TABLE access_log IN EXCLUSIVE MODE")
    try:
        waiting = [
            asyncio.create_task(lookup(batcher, vault, throttle, key, plain(c), None))
            for _, c, _ in shoppers
        ]
        await until_a_batch_waits_for_a_lock(conn)
        for task in list(batcher.tasks):  # what the event loop does to them when it stops
            task.cancel()
        answers = await asyncio.gather(*waiting, return_exceptions=True)
    finally:
        await conn.execute("COMMIT")
    assert all(isinstance(a, Unavailable) for a in answers), answers
    assert all(a.retry_after for a in answers)  # answered with Retry-After: try another instance
    assert batcher.running == 0 and not batcher.queue and not batcher.tasks
    for customer, _, _ in shoppers:
        assert await disclosures(conn, customer.id) == 0  # the statement was cancelled


async def test_lookup_connections_never_compile_the_lookup_with_jit(database) -> None:
    """The lookup's connections disable sequential scans, which inflates its plan's cost past
    jit_above_cost: a server with LLVM (Debian's PostgreSQL 15) compiled every lookup, about 1 s
    each. JIT stays off on them."""
    pool = await db.create_pool(database.url, 1, 1, LOOKUP_SERVER_SETTINGS)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW jit") == "off"
            assert await conn.fetchval("SHOW enable_seqscan") == "off"
    finally:
        await pool.close()
