"""A loyalty card is findable at the till only once proven: the customer shows a checkout code
while the till scans the card. Adding a card never tells whose card it is."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from prefs.crypto import Vault
from prefs.customers.service import CARD_CHANGES_PER_HOUR
from prefs.keys import service as keys
from tests.support.customer import CHINOS, bearer, checkout_code, grant, keep_all
from tests.support.till import NOT_FOUND_DETAIL, fresh_card, look_up, till_key


async def confirm(client: httpx.AsyncClient, key: str, card: str, code: str) -> httpx.Response:
    return await client.post(
        "/v1/pos/cards/confirm", headers=bearer(key), json={"card": card, "code": code}
    )


async def granted(client: httpx.AsyncClient, new_customer: Any, card: str | None) -> Any:
    """A customer who added ``card`` (not confirmed) and lets tills see everything."""
    customer = await new_customer(card=card, confirmed=False)
    await keep_all(client, customer, CHINOS)
    await grant(client, customer)
    return customer


def shape(answer: dict[str, Any]) -> dict[str, Any]:
    """What an answer says apart from the customer's own id, card and times."""
    return {k: v for k, v in answer.items() if k not in {"id", "card", "created_at", "updated_at"}}


async def test_adding_a_taken_card_answers_like_adding_a_free_one(
    client: httpx.AsyncClient, new_customer: Any
) -> None:
    taken = fresh_card()
    await new_customer(card=taken)
    prober, other = await new_customer(), await new_customer()

    onto_taken = await client.patch("/v1/me", headers=prober.headers, json={"card": taken})
    onto_free = await client.patch("/v1/me", headers=other.headers, json={"card": fresh_card()})

    assert onto_taken.status_code == onto_free.status_code == 200, onto_taken.text
    assert shape(onto_taken.json()) == shape(onto_free.json())
    assert onto_taken.json()["card_status"] == "pending"


async def test_enrolling_with_a_taken_card_answers_like_a_free_one(
    client: httpx.AsyncClient, new_customer: Any
) -> None:
    taken = fresh_card()
    await new_customer(card=taken)
    squatter = await new_customer(card=taken, confirmed=False)  # asserts 201 inside
    me = await client.get("/v1/me", headers=squatter.headers)
    assert me.json()["card_status"] == "pending"


async def test_a_card_not_yet_confirmed_is_not_found_at_the_till(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    await granted(client, new_customer, card)
    _, till = await till_key(conn)

    response = await look_up(client, till, card=card)

    assert response.status_code == 404
    assert response.json()["detail"] == NOT_FOUND_DETAIL


async def test_a_card_confirmed_with_a_checkout_code_is_found_at_the_till(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    customer = await granted(client, new_customer, card)
    _, till = await till_key(conn)
    code = (await checkout_code(client, customer))["code"]

    confirmed = await confirm(client, till, card, code)

    assert confirmed.status_code == 204, confirmed.text
    me = (await client.get("/v1/me", headers=customer.headers)).json()
    assert me["card_status"] == "confirmed"
    assert me["card"] == card.replace(" ", "")
    found = await look_up(client, till, card=card)
    assert found.status_code == 200, found.text
    assert [p["product"]["sku"] for p in found.json()["preferences"]] == ["CL-CHINO-3434"]


async def test_the_card_holder_takes_a_squatted_card_over_and_every_other_claim_ends(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    squatter = await granted(client, new_customer, None)
    # a squatter who registered the card before cards had to be proven (it stays confirmed)
    await new_customer_card_confirmed_before_proof(conn, client, squatter, card)
    other_claimant = await granted(client, new_customer, card)
    holder = await granted(client, new_customer, card)
    _, till = await till_key(conn)
    squatted = await look_up(client, till, card=card)
    assert squatted.status_code == 200

    code = (await checkout_code(client, holder))["code"]
    assert (await confirm(client, till, card, code)).status_code == 204

    assert (await client.get("/v1/me", headers=holder.headers)).json()["card_status"] == (
        "confirmed"
    )
    for gone in (squatter, other_claimant):
        me = (await client.get("/v1/me", headers=gone.headers)).json()
        assert me["card"] is None and me["card_status"] is None
    found = await look_up(client, till, card=card)
    assert found.status_code == 200
    looked = await client.get("/v1/me/access-log", headers=holder.headers)
    assert looked.json()["items"], "the holder's access log shows the lookup"
    squatters_log = await client.get("/v1/me/access-log", headers=squatter.headers)
    assert len(squatters_log.json()["items"]) == 1, "only the lookup before the takeover"


async def test_a_card_proven_at_a_till_is_never_taken_by_another_customers_code(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    holder = await granted(client, new_customer, card)
    _, till = await till_key(conn)
    _, other_till = await till_key(conn)
    code = (await checkout_code(client, holder))["code"]
    assert (await confirm(client, till, card, code)).status_code == 204
    squatter = await granted(client, new_customer, card)  # a copied barcode, say
    squatters_code = (await checkout_code(client, squatter))["code"]

    taking = await confirm(client, other_till, card, squatters_code)

    assert taking.status_code == 404
    assert taking.json()["detail"] == NOT_FOUND_DETAIL
    holders = (await client.get("/v1/me", headers=holder.headers)).json()
    assert holders["card_status"] == "confirmed"
    assert (await client.get("/v1/me", headers=squatter.headers)).json()["card_status"] == (
        "pending"
    )
    await look_up(client, other_till, card=card)
    assert len((await client.get("/v1/me/access-log", headers=holder.headers)).json()["items"]) == 1
    assert (await client.get("/v1/me/access-log", headers=squatter.headers)).json()["items"] == []


async def new_customer_card_confirmed_before_proof(
    conn: asyncpg.Connection, client: httpx.AsyncClient, customer: Any, card: str
) -> None:
    """What a card enrolled before this change looks like: claimed, then moved to card_index
    by the migration's rule (enrolled cards stay findable)."""
    response = await client.patch("/v1/me", headers=customer.headers, json={"card": card})
    assert response.status_code == 200
    await conn.execute(
        "INSERT INTO card_index (card_hash, index_version, customer_id) "
        "SELECT card_hash, index_version, customer_id FROM card_claims WHERE customer_id = $1",
        uuid.UUID(customer.id),
    )
    await conn.execute("DELETE FROM card_claims WHERE customer_id = $1", uuid.UUID(customer.id))


async def test_confirming_with_anything_that_does_not_match_is_the_same_404(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    card = fresh_card()
    customer = await granted(client, new_customer, card)
    stranger = await granted(client, new_customer, fresh_card())
    _, till = await till_key(conn)
    code = (await checkout_code(client, customer))["code"]
    strangers_code = (await checkout_code(client, stranger))["code"]

    attempts = [
        (card, strangers_code),  # a code of someone who has not claimed the card
        (fresh_card(), code),  # a card the code's customer has not claimed
        (card, "23456789"),  # no such code
    ]
    answers = [await confirm(client, till, c, k) for c, k in attempts]

    assert [a.status_code for a in answers] == [404, 404, 404]
    assert len({a.json()["detail"] for a in answers}) == 1
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert (await look_up(client, till, card=card)).status_code == 404
    me = (await client.get("/v1/me", headers=customer.headers)).json()
    assert me["card_status"] == "pending"


async def test_confirmations_that_miss_are_throttled_with_the_lookups(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any, settings: Any
) -> None:
    card = fresh_card()
    customer = await granted(client, new_customer, card)
    _, till = await till_key(conn)
    code = (await checkout_code(client, customer))["code"]

    for _ in range(settings.lookup_misses_per_minute_per_key):
        assert (await confirm(client, till, fresh_card(), code)).status_code == 404
    refused = await confirm(client, till, card, code)

    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert (await look_up(client, till, card=fresh_card())).status_code == 429
    me = (await client.get("/v1/me", headers=customer.headers)).json()
    assert me["card_status"] == "pending"


async def test_card_changes_are_limited_per_customer(
    client: httpx.AsyncClient, new_customer: Any
) -> None:
    customer = await new_customer()
    for _ in range(CARD_CHANGES_PER_HOUR):
        answer = await client.patch("/v1/me", headers=customer.headers, json={"card": fresh_card()})
        assert answer.status_code == 200, answer.text
    kept = (await client.get("/v1/me", headers=customer.headers)).json()["card"]

    refused = await client.patch("/v1/me", headers=customer.headers, json={"card": fresh_card()})

    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert (await client.get("/v1/me", headers=customer.headers)).json()["card"] == kept


async def test_setting_the_same_confirmed_card_again_keeps_it_confirmed(
    client: httpx.AsyncClient, new_customer: Any
) -> None:
    card = fresh_card()
    customer = await new_customer(card=card)
    again = await client.patch("/v1/me", headers=customer.headers, json={"card": card})
    assert again.json()["card_status"] == "confirmed"


async def test_erasure_ends_a_pending_claim(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer(card=fresh_card(), confirmed=False)

    assert (await client.delete("/v1/me", headers=customer.headers)).status_code == 204

    left = await conn.fetchval(
        "SELECT count(*) FROM card_claims WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert left == 0


async def test_reindexing_leaves_a_pending_card_pending(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any, vault: Vault
) -> None:
    card = fresh_card()
    await granted(client, new_customer, card)
    proven = fresh_card()
    await granted(client, new_customer, None)
    holder = await new_customer(card=proven)
    await grant(client, holder)
    _, till = await till_key(conn)

    await keys.reindex(conn, vault)

    assert (await look_up(client, till, card=card)).status_code == 404
    assert (await look_up(client, till, card=proven)).status_code == 200
