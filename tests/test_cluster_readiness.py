"""Cluster readiness as a check: every statement the service sends runs on one shard group of a
Citus cluster laid out as docs/scale-out.md says, or is allowed there with its reason.

The statements come from the service itself: every pool it opens in this session reports what it
sends (tests/support/sql_capture.py), and the journeys below make sure the main paths ran —
enrolment, preferences, consents, the till's lookup and purchases, checkout codes ended one by
one and with the grants, reorders to a partner and a store, the partner's feed and the store's
queue, export, erasure, the purge and the operator's commands. The journeys' service runs with
PREFS_DATABASE_LAYOUT=distributed, as it would on a cluster, whatever the suite's layout. Whatever
else the session ran before is checked too, but the statements only a single node is sent
(distribution.SINGLE_NODE_ONLY).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import msgspec
import pytest

from prefs import credentials, db, feeds
from prefs.app import create_app
from prefs.cards import service as cards
from prefs.checkout import service as checkout
from prefs.consents.service import expire_due
from prefs.customers import service as customers
from prefs.partners import service as partners
from prefs.pos import service as pos
from prefs.purchases import service as purchases
from prefs.retention import service as retention
from prefs.settings import Settings
from prefs.stores import service as stores
from tests.support import distribution, sql_capture
from tests.support.customer import CHINOS, bearer, checkout_code, grant, keep
from tests.support.partner import (
    feed_page,
    insights_key,
    partner_key,
    partner_reorder,
    reference,
    reorder,
    set_status,
)
from tests.support.servers import LiveServer
from tests.support.stores import drain, in_directory, move
from tests.support.till import BOOTS, SHIRT, fresh_card, look_up, till_key


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[LiveServer]:
    """The service as on a cluster (PREFS_DATABASE_LAYOUT=distributed), on the session's database
    and keys: the journeys' client and customers talk to it."""
    distributed = msgspec.structs.replace(settings, database_layout="distributed")
    with LiveServer(create_app(distributed)) as live:
        yield live


async def _journeys(client, database, settings, vault, new_customer) -> None:
    operator = sql_capture.watch(await db.connect(database.url))
    try:
        # the operator's commands
        store = await in_directory(operator, name="Cluster Street")
        assert store in {s.id for s in await stores.list_all(operator)}
        _, till = await till_key(operator, store)
        partner, partner_api = await partner_key(operator)
        _, insights_api = await insights_key(operator)
        assert await credentials.list_all(operator)

        # a customer enrols with a card, keeps preferences, changes and deletes one
        card = fresh_card()
        customer = await new_customer(card=card)
        chinos = await keep(client, customer, CHINOS)
        shirt = await keep(client, customer, SHIRT)
        boots = await keep(client, customer, BOOTS)
        assert (await client.get("/v1/me/preferences", headers=customer.headers)).is_success
        changed = await client.patch(
            f"/v1/me/preferences/{shirt['id']}",
            headers={**customer.headers, "If-Match": f'"{shirt["version"]}"'},
            json={"note": "slim fit"},
        )
        assert changed.status_code == 200, changed.text
        deleted = await client.delete(
            f"/v1/me/preferences/{boots['id']}",
            headers={**customer.headers, "If-Match": f'"{boots["version"]}"'},
        )
        assert deleted.status_code == 204, deleted.text

        # consents; the till looks the customer up by card and by checkout code (found, and not),
        # adds purchases
        await grant(client, customer, "pos")
        assert (await look_up(client, till, card=card)).status_code == 200
        assert (await look_up(client, till, card=fresh_card())).status_code == 404
        code = await checkout_code(client, customer)
        assert (await look_up(client, till, code=code["code"])).status_code == 200
        ended = await client.delete(f"/v1/me/checkout-codes/{code['id']}", headers=customer.headers)
        assert ended.status_code == 204, ended.text
        assert (await look_up(client, till, code=code["code"])).status_code == 404
        await checkout_code(client, customer, keep_purchases=True)  # ended with the grants below
        await client.put("/v1/me/consents/purchases", headers=customer.headers, json={})
        bought = await client.post(
            "/v1/pos/purchases",
            headers={**bearer(till), "Idempotency-Key": str(uuid.uuid4())},
            json={
                "card": card,
                "items": [{"sku": "CHN-34", "attributes": {"waist": "34"}, "quantity": 1}],
            },
        )
        assert bought.status_code in (200, 201), bought.text
        for path in ("/v1/me/consents", "/v1/me/consents/history", "/v1/me/access-log"):
            assert (await client.get(path, headers=customer.headers)).is_success, path

        # a reorder to the partner: its feed, its moves, its proposal and its reads
        fulfiller = f"partner:{partner.partner_id}"
        await grant(client, customer, fulfiller, ["product", "attributes"])
        placed = await reorder(client, customer, chinos["id"], fulfiller)
        assert placed.status_code == 201, placed.text
        page = await feed_page(client, partner_api)
        assert [item["id"] for item in page["items"]] == [placed.json()["id"]]
        await feed_page(client, partner_api, page["next"])
        assert (await set_status(client, partner_api, placed.json()["id"], "accepted")).is_success
        ref = await reference(client, customer, partner.partner_id)
        shared = await client.get(
            f"/v1/partner/customers/{ref}/preferences", headers=bearer(partner_api)
        )
        assert shared.status_code == 200, shared.text
        proposed = await partner_reorder(client, partner_api, ref, shared.json()["items"][0]["id"])
        assert proposed.status_code == 201, proposed.text
        confirmed = await client.post(
            f"/v1/me/reorders/{proposed.json()['id']}/confirm", headers=customer.headers
        )
        assert confirmed.status_code == 200, confirmed.text

        # a reorder to the store: its queue and its moves; the customer cancels another
        waiting = await reorder(client, customer, chinos["id"], f"store:{store}")
        other = await reorder(client, customer, shirt["id"], f"store:{store}")
        assert waiting.status_code == other.status_code == 201
        changes, _ = await drain(client, till)
        assert len(changes) == 2
        assert (await move(client, till, waiting.json()["id"], "accepted")).status_code == 200
        cancel = await client.post(
            f"/v1/me/reorders/{other.json()['id']}/cancel", headers=customer.headers
        )
        assert cancel.status_code == 200, cancel.text
        assert (await client.get("/v1/me/reorders", headers=customer.headers)).is_success
        assert (await client.get("/v1/stores", headers=customer.headers)).is_success

        # insights; the customer withdraws consent, exports, and erases everything
        await client.get("/v1/insights/discontinued-demand", headers=bearer(insights_api))
        for audience in ("purchases", "pos"):  # their codes stop keeping purchases, then end
            gone = await client.delete(f"/v1/me/consents/{audience}", headers=customer.headers)
            assert gone.status_code == 200, gone.text
        withdrawn = await client.delete(f"/v1/me/consents/{fulfiller}", headers=customer.headers)
        assert withdrawn.status_code == 200, withdrawn.text
        assert (await client.get("/v1/me/export", headers=customer.headers)).status_code == 200
        assert (await client.delete("/v1/me", headers=customer.headers)).status_code == 204

        # the jobs, and the operator closes the store
        await retention.purge(operator, vault, settings.controller, 400)
        await stores.close(operator, store)
        await expire_due(operator, vault, settings.controller)
    finally:
        await operator.close()


async def test_every_statement_the_service_sends_is_single_shard_co_located_or_allowed(
    client, database, settings, vault, new_customer
):
    before = dict(sql_capture.STATEMENTS)
    await _journeys(client, database, settings, vault, new_customer)
    statements = distribution.on_a_cluster(sql_capture.STATEMENTS)
    # the till's four lookups (a card and a code, each found and not), each a batch of its own,
    # routed: the one-statement lookup is the single layout's
    for sent in (pos.ROUTE, pos.LOOKUP_ROUTED):
        assert sql_capture.STATEMENTS.get(sent, 0) - before.get(sent, 0) >= 4, sent[:60]
    for single in (pos.LOOKUP, pos.LOOKUP_CARDS):
        assert sql_capture.STATEMENTS.get(single, 0) == before.get(single, 0)
    for sent in (
        feeds.ENTRIES,
        feeds.CUSTOMER_OF,
        partners.FEED,
        stores.QUEUE,
        stores.STILL_OPEN,
        checkout.END,
        checkout.END_ALL,
        checkout.STOP_KEEPING,
        purchases.STILL_THEIRS,
        cards.OTHER_HOLDERS,
        customers.CONFIRMED,
    ):
        assert sql_capture.STATEMENTS.get(sent, 0) > before.get(sent, 0), (
            f"the journeys never sent {sent[:60]}"
        )
    assert len(statements) > 100, f"only {len(statements)} statements collected"
    found = distribution.report(statements)
    assert not found, "\n".join(found)


def test_the_one_statement_lookup_leaves_one_shard_group_so_a_cluster_needs_the_layout():
    """Why PREFS_DATABASE_LAYOUT=distributed is needed on a cluster: the single layout's lookup
    reads the till's store's misses and the customer's rows without their distribution columns
    pinned, and the check says so (a service on a cluster that sent it would fail the check)."""
    for single in (pos.LOOKUP, pos.LOOKUP_CARDS):
        found = distribution.problems(single)
        for table in ("store_misses", "customer_keys", "consents", "preferences"):
            assert any(f"{table} read without" in problem for problem in found), (table, found)
        assert distribution.report([single])


def test_what_the_allowlist_holds_still_leaves_one_shard_and_says_why():
    """An allowed statement that became single-shard is taken off the list (else the list grows
    stale and hides the next one with the same fingerprint)."""
    seen = {distribution.fingerprint(sql): sql for sql in sql_capture.STATEMENTS}
    for fingerprint, (where, why) in {**distribution.ALLOWED, **distribution.KNOWN_GAPS}.items():
        assert where and len(why) > 30, fingerprint
        if fingerprint in seen:
            assert distribution.problems(seen[fingerprint]), (
                f"{where} is single-shard now: unlist it"
            )


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT * FROM reorders WHERE reorder_id = $1", "every shard"),
        ("UPDATE preferences SET rank = 1 WHERE preference_id = $1", "every shard"),
        ("DELETE FROM consents WHERE audience = $1", "every shard"),
        (
            "SELECT * FROM reorders r JOIN consents g ON g.audience = r.fulfiller "
            "WHERE r.customer_id = $1",
            "every shard",
        ),
        (
            "SELECT * FROM reorders r JOIN partner_refs p ON p.customer_id = r.customer_id "
            "WHERE r.customer_id = $1 AND p.partner_id = $2",
            "not co-located",
        ),
        (
            "SELECT * FROM reorders r WHERE r.customer_id = $1 OR r.customer_id = $2 "
            "AND EXISTS (SELECT 1 FROM consents c WHERE c.audience = 'pos')",
            "every shard",
        ),
        (
            "WITH t AS (SELECT customer_id FROM partner_refs WHERE partner_id = $1) "
            "SELECT * FROM consents g JOIN t ON t.customer_id = g.customer_id",
            "every shard",
        ),
        (
            "WITH hit AS MATERIALIZED (SELECT customer_id FROM consents WHERE customer_id = $1) "
            "SELECT * FROM hit JOIN preferences p ON p.customer_id = hit.customer_id",
            "every shard",
        ),
        (
            "WITH hit AS (SELECT customer_id FROM consents WHERE customer_id = $1) "
            "SELECT * FROM hit JOIN preferences p ON p.customer_id = hit.customer_id "
            "JOIN hit h2 ON true",
            "every shard",
        ),
        ("SELECT count(*) FROM demand_groups d JOIN customers c ON true", "coordinator-local"),
        ("SELECT * FROM no_such_table WHERE customer_id = $1", "no list"),
    ],
)
def test_the_check_catches_a_statement_that_leaves_one_shard(sql, why):
    found = distribution.problems(sql)
    assert any(why in problem for problem in found), found
    assert distribution.report([sql]), "the report let it through"


@pytest.mark.parametrize(
    "sql",
    [
        # the statements that replaced joins and reads across shard groups (issue 20)
        pos.ROUTE,
        pos.LOOKUP_ROUTED,
        purchases.CARD_HOLDERS,
        purchases.GRANTED,
        purchases.STILL_GRANTED,
        purchases.STILL_THEIRS,
        cards.OTHER_HOLDERS,
        cards.PROVEN_BY_ANOTHER,
        customers.PROFILE,
        customers.CONFIRMED,
        customers.CARD_CT,
        checkout.CODE_HASH,
        checkout.END,
        checkout.CODE_HASHES,
        checkout.END_ALL,
        checkout.STOP_KEEPING,
        "SELECT * FROM reorders WHERE customer_id = $1 AND reorder_id = $2",
        "SELECT * FROM reorders r JOIN customer_keys k ON k.customer_id = r.customer_id "
        "LEFT JOIN stores s ON s.store_id = r.store_id WHERE r.customer_id = ANY($1::uuid[])",
        "UPDATE reorders r SET state = 'cancelled' FROM consents g WHERE r.customer_id = $1 "
        "AND g.customer_id = r.customer_id AND g.audience = $2",
        "DELETE FROM access_log WHERE customer_id = $1",
        "INSERT INTO feed_entries (recipient, position, customer_id, reorder_id) "
        "VALUES ($1, $2, $3, $4)",
        "SELECT p.name FROM partners p WHERE p.retired_at IS NULL",
        "SELECT 1 FROM customers c WHERE c.customer_id = $1 AND NOT EXISTS "
        "(SELECT 1 FROM consents g WHERE g.customer_id = c.customer_id)",
        "BEGIN ISOLATION LEVEL READ COMMITTED",
        "WITH hit AS NOT MATERIALIZED (SELECT customer_id FROM consents WHERE customer_id = $1) "
        "SELECT * FROM hit JOIN preferences p ON p.customer_id = hit.customer_id "
        "JOIN customer_keys k ON k.customer_id = hit.customer_id",
        "SELECT t.oid FROM pg_catalog.pg_type t WHERE t.oid = ANY($1::oid[])",
    ],
)
def test_the_check_lets_single_shard_and_co_located_statements_through(sql):
    assert distribution.problems(sql) == []


@pytest.mark.parametrize(
    "sql",
    [
        # a subquery anywhere in a statement is a query of its own, not only in WHERE and the
        # select list
        "SELECT * FROM reorders WHERE customer_id = $1 LIMIT (SELECT count(*) FROM consents)",
        "SELECT * FROM reorders WHERE customer_id = $1 ORDER BY (SELECT max(rank) FROM preferences)",
        "SELECT state FROM reorders WHERE customer_id = $1 GROUP BY state, "
        "(SELECT 1 FROM consents LIMIT 1)",
        "UPDATE reorders SET state = 'cancelled' WHERE customer_id = $1 "
        "RETURNING (SELECT count(*) FROM consents)",
        "DELETE FROM reorders WHERE customer_id = $1 RETURNING (SELECT count(*) FROM consents)",
        "INSERT INTO feed_entries (recipient, position, customer_id, reorder_id) "
        "VALUES ($1, (SELECT max(feed_position) FROM reorders), $2, $3)",
        "INSERT INTO feed_positions (recipient, last) VALUES ($1, 1) ON CONFLICT (recipient) "
        "DO UPDATE SET last = (SELECT count(*) FROM reorders)",
        # statements the checker does not take apart must not pass unread
        "MERGE INTO reorders r USING stores s ON r.store_id = s.store_id "
        "WHEN MATCHED THEN UPDATE SET state = 'cancelled'",
        "CREATE TEMP TABLE t AS SELECT * FROM reorders",
        "COPY (SELECT * FROM reorders) TO STDOUT",
        "DECLARE c CURSOR FOR SELECT * FROM reorders",
    ],
)
def test_the_check_reads_every_part_of_a_statement(sql):
    assert distribution.problems(sql), "passed unread"
    assert distribution.report([sql]), "the report let it through"
