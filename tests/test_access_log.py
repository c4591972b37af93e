"""The access log: every disclosure has exactly one record, failures have none, and the customer
reads them newest first, in words."""

from __future__ import annotations

import asyncio
import base64
import uuid

import pytest

from prefs import credentials
from prefs.access_log import service as access_log
from tests.support.customer import bearer, checkout_code, grant, withdraw
from tests.support.stores import fresh_store, in_directory
from tests.support.till import disclosures, fresh_card, look_up, shopper, till_key, visits


async def log_of(client, customer, **params) -> dict:
    response = await client.get("/v1/me/access-log", headers=customer.headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def test_each_successful_lookup_writes_exactly_one_record_and_failures_none(
    client, conn, new_customer, vault, settings
):
    customer, card, _ = await shopper(new_customer, client)
    cred, key = await till_key(conn)
    _, guesser = await till_key(conn)
    revoked, revoked_key = await till_key(conn)
    await credentials.revoke(conn, revoked.id)

    # Nothing granted yet, a malformed card, a revoked key, an expired code: nothing disclosed.
    assert (await look_up(client, key, card=card)).status_code == 404
    assert (await look_up(client, key, card=card.replace(" ", "x"))).status_code == 400
    await grant(client, customer, fields=["product"])
    assert (await look_up(client, revoked_key, card=card)).status_code == 401
    stale = await checkout_code(client, customer, ttl_seconds=30)
    await conn.execute(
        "UPDATE checkout_codes SET expires_at = now() - interval '1 second' WHERE code_hash = $1",
        vault.index.checkout_code(stale["code"]),
    )
    assert (await look_up(client, key, code=stale["code"])).status_code == 404
    for _ in range(settings.lookup_misses_per_minute_per_key):
        await look_up(client, guesser, card=fresh_card())
    assert (await look_up(client, guesser, card=card)).status_code == 429
    assert await disclosures(conn, customer.id) == 0

    seen = [await look_up(client, key, card=card) for _ in range(3)]

    assert [r.status_code for r in seen] == [200, 200, 200]
    rows = await visits(conn, vault, customer.id)
    assert sorted(str(r["disclosure_id"]) for r in rows) == sorted(
        r.json()["disclosure_id"] for r in seen
    )
    assert {r["credential_id"] for r in rows} == {cred.id}

    await withdraw(client, customer)
    assert (await look_up(client, key, card=card)).status_code == 404
    assert await disclosures(conn, customer.id) == 3


async def test_fifty_lookups_at_once_leave_fifty_records(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    code = (await checkout_code(client, customer, fields=["attributes"], ttl_seconds=300))["code"]
    store = fresh_store()  # a checkout code works only in the store that used it first
    tills = [await till_key(conn, store=store) for _ in range(5)]

    answers = await asyncio.gather(
        *(
            look_up(client, tills[i % 5][1], **({"card": card} if i % 2 else {"code": code}))
            for i in range(50)
        )
    )

    assert [a.status_code for a in answers] == [200] * 50
    ids = {a.json()["disclosure_id"] for a in answers}
    assert len(ids) == 50
    rows = await conn.fetch(
        "SELECT disclosure_id FROM access_log WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert {str(r["disclosure_id"]) for r in rows} == ids


async def test_the_customer_reads_the_log_newest_first_in_pages(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    _, key = await till_key(conn)
    code = (await checkout_code(client, customer, fields=["attributes"]))["code"]
    made = []
    for i in range(5):
        answer = await look_up(client, key, **({"card": card} if i % 2 == 0 else {"code": code}))
        assert answer.status_code == 200
        made.append(answer.json()["disclosure_id"])

    pages = [await log_of(client, customer, limit=2)]
    while pages[-1]["next"] is not None:
        assert len(pages) < 5
        pages.append(await log_of(client, customer, limit=2, after=pages[-1]["next"]))

    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert pages[-1]["next"] is None
    listed = [item["id"] for page in pages for item in page["items"]]
    assert listed == list(reversed(made))
    times = [item["at"] for page in pages for item in page["items"]]
    assert times == sorted(times, reverse=True)
    assert [item["via"] for page in pages for item in page["items"]] == [
        "card",
        "code",
        "card",
        "code",
        "card",
    ]


async def test_an_entry_names_the_store_the_till_what_was_seen_and_why(client, conn, new_customer):
    customer, card, kept = await shopper(new_customer, client)
    chinos, shirt, _ = kept
    await grant(
        client, customer, fields=["product", "attributes"], preferences=[chinos["id"], shirt["id"]]
    )
    store = await in_directory(conn, name="Oxford Street")
    cred, key = await credentials.create(conn, "pos", "Till 3", store=store)
    assert (await look_up(client, key, card=card)).status_code == 200

    [entry] = (await log_of(client, customer))["items"]

    assert entry["who"]["kind"] == "pos"
    assert entry["who"]["id"] == str(cred.id)
    assert entry["who"]["name"] == "Till 3"
    assert entry["who"]["store"] == store
    assert entry["who"]["store_name"] == "Oxford Street"
    assert entry["purpose"] == "checkout"
    assert entry["via"] == "card"
    assert entry["fields"] == ["product", "attributes"]
    assert entry["preferences"] == [
        {"id": chinos["id"], "name": "Classic Chino"},
        {"id": shirt["id"], "name": "Oxford Shirt"},
    ]
    # the store by its name in the directory, the products by name, what else was seen
    assert entry["summary"] == (
        "Till 3 at Oxford Street saw Classic Chino and Oxford Shirt with your sizes and details "
        "at checkout, using your loyalty card."
    )
    assert store not in entry["summary"]


def test_a_store_the_directory_does_not_name_is_shown_by_its_number() -> None:
    # every till's store is in the directory today; an entry whose store has since left it (or
    # an export read elsewhere) still says which store, by its number
    row = {"actor_name": "Till 1", "store": "0421", "purpose": "checkout", "via": "code"}
    seen = {**row, "fields": ["attributes", "note"]}
    assert access_log.summary(seen, ["Classic Chino", "Oxford Shirt"], {}) == (
        "Till 1 at store 0421 saw your sizes and details and your notes for Classic Chino and "
        "Oxford Shirt at checkout, using a checkout code you showed."
    )
    assert access_log.summary({**row, "fields": []}, ["Classic Chino"], {"0421": "Soho"}) == (
        "Till 1 at Soho saw nothing of Classic Chino at checkout, using a checkout code you showed."
    )
    many = [f"Item {n}" for n in range(5)]
    assert "Item 0, Item 1, Item 2 and 2 more" in access_log.summary(
        {**row, "fields": ["product"]}, many, {}
    )


async def test_a_renamed_store_shows_its_new_name_in_earlier_entries(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    store = await in_directory(conn, name="High Street")
    _, key = await till_key(conn, store=store, name="Till 2")
    assert (await look_up(client, key, card=card)).status_code == 200
    await conn.execute("UPDATE stores SET name = 'Market Square' WHERE store_id = $1", store)

    [entry] = (await log_of(client, customer))["items"]

    assert entry["who"]["store_name"] == "Market Square"
    assert entry["summary"].startswith("Till 2 at Market Square saw Classic Chino, ")


async def test_a_checkout_code_disclosure_says_so_and_names_only_what_the_code_showed(
    client, conn, new_customer
):
    customer, _, kept = await shopper(new_customer, client)
    _, _, boots = kept
    _, key = await till_key(conn, name="Till 1")
    code = (await checkout_code(client, customer, fields=["note"], preferences=[boots["id"]]))[
        "code"
    ]
    assert (await look_up(client, key, code=code)).status_code == 200

    [entry] = (await log_of(client, customer))["items"]

    assert entry["via"] == "code"
    assert entry["fields"] == ["note"]
    assert [p["name"] for p in entry["preferences"]] == ["Desert Boot"]
    assert "checkout code" in entry["summary"]
    assert "your notes" in entry["summary"]
    assert "Desert Boot" in entry["summary"]


async def test_the_log_shows_only_the_customers_own_disclosures_and_not_their_own_reads(
    client, conn, new_customer
):
    alice, alice_card, _ = await shopper(new_customer, client)
    bob, bob_card, _ = await shopper(new_customer, client)
    await grant(client, alice)
    await grant(client, bob)
    _, key = await till_key(conn)
    alices = (await look_up(client, key, card=alice_card)).json()["disclosure_id"]
    await look_up(client, key, card=bob_card)
    for path in ("/v1/me", "/v1/me/preferences", "/v1/me/consents", "/v1/me/access-log"):
        assert (await client.get(path, headers=alice.headers)).status_code == 200

    entries = (await log_of(client, alice))["items"]

    assert [e["id"] for e in entries] == [alices]


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "after",
    [
        "nonsense",
        "%%%",
        cursor("yesterday|" + str(uuid.uuid4())),
        cursor("2026-01-01T00:00:00+00:00|not-a-uuid"),
        cursor("2026-01-01T00:00:00+00:00"),
        base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
        cursor(f"99999-01-01T00:00:00+00:00|{uuid.uuid4()}"),
    ],
    ids=["word", "symbols", "bad-time", "bad-id", "no-id", "not-text", "year-99999"],
)
async def test_a_bad_access_log_cursor_is_refused(client, new_customer, after):
    customer = await new_customer()
    response = await client.get(
        "/v1/me/access-log", headers=customer.headers, params={"after": after}
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("limit", [0, -1, 201, "many"])
async def test_an_access_log_page_size_out_of_range_is_refused(client, new_customer, limit):
    customer = await new_customer()
    response = await client.get(
        "/v1/me/access-log", headers=customer.headers, params={"limit": limit}
    )
    assert response.status_code == 400


async def test_the_access_log_is_for_the_customer_only(client, conn):
    _, key = await till_key(conn)
    assert (await client.get("/v1/me/access-log")).status_code == 401
    assert (await client.get("/v1/me/access-log", headers=bearer(key))).status_code == 401
