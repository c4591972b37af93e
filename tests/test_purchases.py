"""Purchases into the locker: the `purchases` grant, keep-purchases codes and POST
/v1/pos/purchases, over real HTTP on the suite's PostgreSQL.

Every test makes its own customers, cards, stores, till keys and SKUs: the database is shared.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from prefs.crypto import Vault, api_key_hash
from prefs.settings import Settings
from tests.support.customer import CHINOS, bearer, checkout_code, grant, keep, preferences_of
from tests.support.stores import fresh_store
from tests.support.till import NOT_FOUND_DETAIL, fresh_card, till_key, visits
from tests.test_privacy_at_rest import copy_block, encodings, pg_dump

TODAY = datetime.now(UTC).date()


def fresh_sku(prefix: str = "CL") -> str:
    return f"{prefix}-{secrets.token_hex(4).upper()}"


async def catalogue_product(
    conn: asyncpg.Connection, sku: str, status: str = "available", name: str = "Classic Chino"
) -> None:
    await conn.execute(
        """INSERT INTO catalogue_products (sku, name, brand, category, status)
           VALUES ($1, $2, 'Ardent', 'trousers', $3)""",
        sku,
        name,
        status,
    )


async def buy(
    client: httpx.AsyncClient, till: str, key: str | None = None, **body: Any
) -> httpx.Response:
    headers = {**bearer(till), "Idempotency-Key": key or str(uuid.uuid4())}
    return await client.post("/v1/pos/purchases", headers=headers, json=body)


def item(sku: str, quantity: int = 1, **more: Any) -> dict[str, Any]:
    return {"sku": sku, "attributes": {"waist": "34", "leg": "34"}, "quantity": quantity, **more}


async def let_tills_add(client: httpx.AsyncClient, customer: Any, **body: Any) -> dict[str, Any]:
    response = await client.put("/v1/me/consents/purchases", headers=customer.headers, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def buyer(client: httpx.AsyncClient, new_customer: Any) -> tuple[str, Any]:
    """A customer with a proven card who lets tills add what they buy."""
    card = fresh_card()
    customer = await new_customer(card=card)
    await let_tills_add(client, customer)
    return card, customer


async def test_a_purchases_grant_has_its_own_receipt_and_takes_no_fields(
    client: httpx.AsyncClient, new_customer: Any
) -> None:
    customer = await new_customer()
    answer = await let_tills_add(client, customer)
    receipt = answer["receipt"]
    assert answer["consent"]["audience"] == "purchases"
    assert answer["consent"]["fields"] == []
    assert receipt["recipient"]["kind"] == "purchases"
    assert receipt["recipient"]["name"] == "Store tills, adding what you buy to your locker"
    assert receipt["purposes"][0]["dpv"] == ["ServicePersonalisation"]
    assert receipt["purposes"][0]["third_party_disclosure"] is False
    assert receipt["pii_categories"] == ["PurchasesAndSpendingHabit", "PhysicalCharacteristic"]
    assert receipt["state"] == "ConsentGiven"

    for body in ({"fields": ["product"]}, {"preferences": "all"}):
        refused = await client.put("/v1/me/consents/purchases", headers=customer.headers, json=body)
        assert refused.status_code == 400, refused.text
        assert "takes no" in refused.json()["detail"]
    # every other audience still needs its fields, and says which
    no_fields = await client.put("/v1/me/consents/pos", headers=customer.headers, json={})
    assert no_fields.status_code == 400
    assert "product, attributes and note" in no_fields.json()["detail"]

    listed = await client.get("/v1/me/consents", headers=customer.headers)
    assert [c["audience"] for c in listed.json()["items"]] == ["purchases"]
    ended = await client.delete("/v1/me/consents/purchases", headers=customer.headers)
    assert ended.status_code == 200
    assert ended.json()["receipt"]["state"] == "ConsentWithdrawn"


async def test_a_purchase_lands_counts_again_and_a_new_size_is_a_new_preference(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    customer = await new_customer(card=card)
    await keep(client, customer)  # the customer's own chinos, typed by hand
    await let_tills_add(client, customer)
    store = fresh_store()
    _, till = await till_key(conn, store)
    sku = fresh_sku()
    await catalogue_product(conn, sku, status="discontinued")
    a_week_ago = TODAY - timedelta(days=7)

    first = await buy(client, till, card=card, items=[item(sku, 2, purchased_on=str(a_week_ago))])
    assert first.status_code == 200, first.text
    assert first.json() == {"added": 1, "updated": 0, "skipped": 0}

    mine = await preferences_of(client, customer)
    assert len(mine) == 2
    added = mine[1]  # at the end of the customer's order
    assert added["rank"] == 2
    assert added["product"] == {
        "sku": sku,
        "name": "Classic Chino",
        "brand": "Ardent",
        "category": "trousers",
    }
    assert added["attributes"] == {"waist": "34", "leg": "34"}
    assert added["status"] == "discontinued"
    assert added["purchases"] == 2
    assert added["last_purchased_on"] == str(a_week_ago)
    assert added["source"] == {"kind": "till", "store": store, "purchased_on": str(a_week_ago)}
    assert mine[0]["source"] is None

    # the same SKU and attributes (in any order) count again; the last purchase moves forward
    again = await buy(
        client,
        till,
        card=card,
        items=[{"sku": sku, "attributes": {"leg": "34", "waist": "34"}, "quantity": 1}],
    )
    assert again.json() == {"added": 0, "updated": 1, "skipped": 0}
    # an older sale arriving late counts, but never moves the last purchase back
    late = await buy(client, till, card=card, items=[item(sku, 1, purchased_on="2020-05-01")])
    assert late.json() == {"added": 0, "updated": 1, "skipped": 0}
    [_, counted] = await preferences_of(client, customer)
    assert counted["id"] == added["id"]
    assert counted["purchases"] == 4
    assert counted["last_purchased_on"] == str(TODAY)
    assert counted["version"] == added["version"] + 2
    assert counted["source"]["purchased_on"] == str(a_week_ago)  # where it first came from

    # another size is another preference; an unknown SKU keeps the till's name, or its SKU
    unknown, nameless = fresh_sku("XX"), fresh_sku("YY")
    more = await buy(
        client,
        till,
        card=card,
        items=[
            {"sku": sku, "attributes": {"waist": "36", "leg": "34"}, "quantity": 1},
            {"sku": unknown, "name": "Till's own name", "quantity": 3},
            {"sku": nameless, "quantity": 1},
        ],
    )
    assert more.json() == {"added": 3, "updated": 0, "skipped": 0}
    mine = await preferences_of(client, customer)
    assert [p["rank"] for p in mine] == [1, 2, 3, 4, 5]
    assert mine[2]["attributes"] == {"waist": "36", "leg": "34"}
    assert mine[3]["product"] == {
        "sku": unknown,
        "name": "Till's own name",
        "brand": None,
        "category": None,
    }
    assert mine[3]["status"] == "available" and mine[3]["purchases"] == 3
    assert mine[4]["product"]["name"] == nameless


async def test_without_a_live_grant_the_till_gets_the_lookups_404_and_nothing_changes(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    customer = await new_customer(card=card)
    await keep(client, customer)
    await grant(client, customer, "pos")  # sharing with the till is not letting it write
    _, till = await till_key(conn)
    sku = fresh_sku()
    before = await preferences_of(client, customer)

    answers = [await buy(client, till, card=card, items=[item(sku)])]  # no purchases grant
    answers.append(await buy(client, till, card=fresh_card(), items=[item(sku)]))  # unknown card
    await let_tills_add(client, customer)
    withdrawn = await client.delete("/v1/me/consents/purchases", headers=customer.headers)
    assert withdrawn.status_code == 200
    answers.append(await buy(client, till, card=card, items=[item(sku)]))  # withdrawn
    await let_tills_add(client, customer, expires_at=str(datetime.now(UTC) + timedelta(days=1)))
    await conn.execute(
        "UPDATE consents SET expires_at = now() - interval '1 second' "
        "WHERE customer_id = $1 AND audience = 'purchases'",
        uuid.UUID(customer.id),
    )
    answers.append(await buy(client, till, card=card, items=[item(sku)]))  # expired
    unproven = fresh_card()
    other = await new_customer(card=unproven, confirmed=False)
    await let_tills_add(client, other)
    answers.append(await buy(client, till, card=unproven, items=[item(sku)]))  # never proven

    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert answer.json()["detail"] == NOT_FOUND_DETAIL
    assert len({answer.content for answer in answers}) == 1  # byte for byte
    assert await preferences_of(client, customer) == before
    assert await preferences_of(client, other) == []
    # each was counted as a miss of the key, as a lookup's would be
    misses = await conn.fetchval(
        "SELECT misses FROM key_misses WHERE key_hash = $1", api_key_hash(till)
    )
    assert misses == len(answers)


async def test_misses_are_throttled_with_the_lookups(
    client: httpx.AsyncClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    _, till = await till_key(conn)
    limit = settings.lookup_misses_per_minute_per_key
    for _ in range(limit):
        assert (await buy(client, till, card=fresh_card(), items=[item("X")])).status_code == 404
    refused = await buy(client, till, card=fresh_card(), items=[item("X")])
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    lookup = await client.post("/v1/pos/lookup", headers=bearer(till), json={"card": fresh_card()})
    assert lookup.status_code == 429  # one throttle for both


async def test_a_keep_purchases_code_works_once_at_its_own_store(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer()
    _, till = await till_key(conn)
    _, elsewhere = await till_key(conn)
    sku = fresh_sku()

    plain = await checkout_code(client, customer, fields=["product"])
    assert plain["keep_purchases"] is False
    assert (await buy(client, till, code=plain["code"], items=[item(sku)])).status_code == 404

    code = await checkout_code(client, customer, fields=["product"], keep_purchases=True)
    assert code["keep_purchases"] is True
    # the code is bound to the first store whose till uses it (a lookup here)
    looked = await client.post("/v1/pos/lookup", headers=bearer(till), json={"code": code["code"]})
    assert looked.status_code == 200
    assert (await buy(client, elsewhere, code=code["code"], items=[item(sku)])).status_code == 404
    kept = await buy(client, till, code=code["code"], items=[item(sku, 2)])
    assert kept.json() == {"added": 1, "updated": 0, "skipped": 0}
    once_only = await buy(client, till, code=code["code"], items=[item(sku)])
    assert once_only.status_code == 404 and once_only.json()["detail"] == NOT_FOUND_DETAIL
    [mine] = await preferences_of(client, customer)
    assert mine["purchases"] == 2
    # the code still shows the locker at the till for the rest of its life
    again = await client.post("/v1/pos/lookup", headers=bearer(till), json={"code": code["code"]})
    assert again.status_code == 200


async def test_replays_answer_once_and_a_reused_key_with_another_body_is_422(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card, customer = await buyer(client, new_customer)
    _, till = await till_key(conn)
    sku = fresh_sku()
    key = f"sale-{uuid.uuid4()}"

    first = await buy(client, till, key, card=card, items=[item(sku, 3)])
    replay = await buy(client, till, key, card=card, items=[item(sku, 3)])
    assert first.status_code == replay.status_code == 200
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    other = await buy(client, till, key, card=card, items=[item(sku, 4)])
    assert other.status_code == 422, other.text

    # concurrent duplicates: one write
    key = f"sale-{uuid.uuid4()}"
    answers = await asyncio.gather(
        *[buy(client, till, key, card=card, items=[item(sku, 5)]) for _ in range(6)]
    )
    assert {a.status_code for a in answers} <= {200, 409}
    assert next(a.json() for a in answers if a.status_code == 200) == {
        "added": 0,
        "updated": 1,
        "skipped": 0,
    }
    [mine] = await preferences_of(client, customer)
    assert mine["purchases"] == 3 + 5
    # another till's key of the same store is another owner: the same key is a new sale there
    _, second_till = await till_key(conn)
    other_till = await buy(client, second_till, key, card=card, items=[item(sku, 1)])
    assert other_till.status_code == 200 and "idempotent-replayed" not in other_till.headers


async def test_bad_items_are_refused_whole_with_nothing_written(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card, customer = await buyer(client, new_customer)
    _, till = await till_key(conn)
    sku = fresh_sku()
    good = item(sku)
    tomorrow_but_one = TODAY + timedelta(days=2)
    cases = {
        "quantity 0": [good, item(sku, 0)],
        "quantity 100": [good, item(sku, 100)],
        "no items": [],
        "101 items": [good] * 101,
        "future day": [good, item(sku, purchased_on=str(tomorrow_but_one))],
        "ancient day": [good, item(sku, purchased_on="1999-12-31")],
        "unknown field": [good, {**item(sku), "price": 10}],
        "empty sku": [good, item("")],
    }
    for name, items in cases.items():
        answer = await buy(client, till, card=card, items=items)
        assert answer.status_code == 400, (name, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
    both = await buy(client, till, card=card, code="ABCD2345", items=[good])
    assert both.status_code == 400
    neither = await buy(client, till, items=[good])
    assert neither.status_code == 400
    no_key = await client.post(
        "/v1/pos/purchases", headers=bearer(till), json={"card": card, "items": [good]}
    )
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["detail"]
    not_a_till = await client.post(
        "/v1/pos/purchases",
        headers={**customer.headers, "Idempotency-Key": "k"},
        json={"card": card, "items": [good]},
    )
    assert not_a_till.status_code == 401
    assert await preferences_of(client, customer) == []


async def test_a_full_locker_counts_what_it_holds_and_skips_the_rest(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card, customer = await buyer(client, new_customer)
    _, till = await till_key(conn)
    sku = fresh_sku()
    first = await buy(client, till, card=card, items=[item(sku)])
    assert first.json()["added"] == 1
    semaphore = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        async with semaphore:
            body = {**CHINOS, "product": {**CHINOS["product"], "sku": f"{sku}-{n}"}}
            await keep(client, customer, body)

    await asyncio.gather(*[one(n) for n in range(499)])
    answer = await buy(client, till, card=card, items=[item(sku), item(fresh_sku()), item("Z")])
    assert answer.json() == {"added": 0, "updated": 1, "skipped": 2}
    mine = await preferences_of(client, customer)
    assert len(mine) == 500


async def test_each_write_is_in_the_access_log_in_words(
    client: httpx.AsyncClient, conn: asyncpg.Connection, vault: Vault, new_customer: Any
) -> None:
    card, customer = await buyer(client, new_customer)
    store = fresh_store()
    _, till = await till_key(conn, store, name="Till 3")  # named "Store <id>" in the directory
    sku = fresh_sku()
    await catalogue_product(conn, sku)
    await buy(client, till, card=card, items=[item(sku)])
    await buy(
        client,
        till,
        card=card,
        items=[item(sku), {"sku": fresh_sku(), "name": "Scarf", "quantity": 1}],
    )
    page = await client.get("/v1/me/access-log", headers=customer.headers)
    assert page.status_code == 200
    summaries = [entry["summary"] for entry in page.json()["items"]]
    assert summaries == [
        f"Till 3 at Store {store} added Scarf to your locker and counted another purchase of "
        "Classic Chino, waist 34 leg 34, using your loyalty card.",
        f"Till 3 at Store {store} added Classic Chino, waist 34 leg 34, to your locker, "
        "using your loyalty card.",
    ]
    [entry, *_] = page.json()["items"]
    assert entry["purpose"] == "purchase" and entry["who"]["store"] == store
    assert entry["fields"] == []  # the till was shown nothing
    # sealed like every other entry: nothing of it in clear
    [newest, *_] = sorted(await visits(conn, vault, customer.id), key=lambda v: v["at"])[::-1]
    assert newest["added"] == ["Scarf"]
    stored = await conn.fetch(
        "SELECT store, purpose, sealed FROM access_log WHERE customer_id = $1",
        uuid.UUID(customer.id),
    )
    assert all(r["store"] is None and r["purpose"] is None and r["sealed"] for r in stored)


async def test_a_dump_after_purchases_holds_no_sku_name_or_size_of_a_customer(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any, database: Any
) -> None:
    card, customer = await buyer(client, new_customer)
    tag = secrets.token_hex(5).upper()
    markers = [f"SKU{tag}Bought", f"Tillname{tag}Scarf", f"Size{tag}Large", f"Store{tag}"]
    store_credential, store_till = await till_key(conn, markers[3])
    answer = await buy(
        client,
        store_till,
        card=card,
        items=[
            {
                "sku": markers[0],
                "name": markers[1],
                "attributes": {"size": markers[2]},
                "quantity": 1,
            }
        ],
    )
    assert answer.json()["added"] == 1
    dump = pg_dump(database.url)
    for marker in markers[:3]:
        assert not any(form in dump for form in encodings(marker)), marker
    # the store is no secret (its till key names it), but where the customer shopped is: it is
    # in the credentials table only, never beside the customer
    # nor which till wrote: the idempotency record names no till in clear
    assert not any(
        str(store_credential.id) in line for line in copy_block(dump, "idempotency_keys")
    )
    # the store's id is the operator's: in its till keys and the stores directory only
    directory = copy_block(dump, "credentials") + copy_block(dump, "stores")
    assert [line for line in dump.splitlines() if markers[3] in line] == [
        line for line in directory if markers[3] in line
    ]
    [mine] = await preferences_of(client, customer)
    assert mine["source"]["store"] == markers[3]
    assert isinstance(date.fromisoformat(mine["source"]["purchased_on"]), date)


async def test_withdrawals_and_ended_codes_racing_purchase_writes_never_deadlock_or_fail(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    """A withdrawal locks the customer and then ends what it ends (the `pos` grant ends the
    codes); a purchase write locks nothing before the customer. Raced, each pair has one order:
    the write lands before the end (and is logged), or answers the 404 after it."""
    for round_ in range(12):
        _, till = await till_key(conn)  # each round's misses on a key of its own
        card, customer = await buyer(client, new_customer)
        await grant(client, customer, "pos", fields=["product"])
        code = await checkout_code(client, customer, fields=["product"], keep_purchases=True)
        sku = fresh_sku()
        by_card, by_code, withdrawn, ended = await asyncio.gather(
            buy(client, till, card=card, items=[item(sku)]),
            buy(client, till, code=code["code"], items=[item(sku, 2)]),
            client.delete("/v1/me/consents/purchases", headers=customer.headers),
            client.delete("/v1/me/consents/pos", headers=customer.headers),  # ends the code
        )
        assert withdrawn.status_code == 200 and ended.status_code == 200, round_
        assert {by_card.status_code, by_code.status_code} <= {200, 404}, (by_card, by_code)
        mine = await preferences_of(client, customer)
        landed = sum(p["purchases"] for p in mine)
        assert landed == (by_card.status_code == 200) + 2 * (by_code.status_code == 200)
        # after both ended, nothing gets in
        assert (await buy(client, till, card=card, items=[item(sku)])).status_code == 404
        assert (await buy(client, till, code=code["code"], items=[item(sku)])).status_code == 404


async def test_a_withdrawal_committed_while_a_write_waits_for_the_customer_is_seen(
    client: httpx.AsyncClient, conn: asyncpg.Connection, database: Any, new_customer: Any
) -> None:
    """The write waits for the customer lock, then checks the grant in a statement of its own:
    a withdrawal that committed meanwhile is seen (a check made in the locking statement would
    read the snapshot from before the wait)."""
    card, customer = await buyer(client, new_customer)
    _, till = await till_key(conn)
    customer_id = uuid.UUID(customer.id)
    other = await asyncpg.connect(database.url)
    try:
        held = other.transaction()
        await held.start()
        await other.execute(
            "SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE", customer_id
        )
        await other.execute(
            "DELETE FROM consents WHERE customer_id = $1 AND audience = 'purchases'", customer_id
        )
        write = asyncio.create_task(buy(client, till, card=card, items=[item(fresh_sku())]))
        await asyncio.sleep(0.5)  # the write found the grant and now waits for the customer
        assert not write.done()
        await held.commit()
        answer = await write
    finally:
        await other.close()
    assert answer.status_code == 404, answer.text
    assert await preferences_of(client, customer) == []


async def test_stopping_purchases_stops_the_keep_purchases_codes_too(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer()
    await let_tills_add(client, customer)
    code = await checkout_code(client, customer, fields=["product"], keep_purchases=True)
    withdrawn = await client.delete("/v1/me/consents/purchases", headers=customer.headers)
    assert withdrawn.status_code == 200
    _, till = await till_key(conn)
    answer = await buy(client, till, code=code["code"], items=[item(fresh_sku())])
    assert answer.status_code == 404
    assert await preferences_of(client, customer) == []
