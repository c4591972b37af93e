"""POST /v1/pos/lookup at the till: one 404 for every miss, card numbers as people type them,
guessing throttled per key and per store."""

from __future__ import annotations

import asyncio
import secrets
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.customer import checkout_code, grant, withdraw
from tests.support.stores import fresh_store
from tests.support.till import NOT_FOUND_DETAIL, disclosures, fresh_card, look_up, shopper, till_key


def digits_from(zero: int) -> dict[int, int]:
    """ASCII digits to another script's digits, which start at code point ``zero``."""
    return str.maketrans("0123456789", "".join(chr(zero + d) for d in range(10)))


ARABIC_INDIC = digits_from(0x0660)  # ٠١٢٣٤٥٦٧٨٩
FULLWIDTH = digits_from(0xFF10)
DEVANAGARI = digits_from(0x0966)


def a_code_nobody_was_given() -> str:
    return "".join(secrets.choice("23456789ABCDEFGHJKMNPQRSTWXYZ") for _ in range(8))


async def erase_behind_the_services_back(conn, customer_id: str) -> None:
    """A stand-in for an erased customer: every row about them gone, data key included."""
    who = uuid.UUID(customer_id)
    async with conn.transaction():
        await conn.execute("SET LOCAL prefs.erasure = 'on'")
        for table in (
            "preferences",
            "card_index",
            "consents",
            "consent_ledger",
            "customer_keys",
            "customers",
        ):
            await conn.execute(f"DELETE FROM {table} WHERE customer_id = $1", who)


async def test_every_negative_lookup_answers_the_same_404(client, conn, new_customer, vault):
    _, key = await till_key(conn)
    never_granted, never_granted_card, _ = await shopper(new_customer, client)
    withdrawn, withdrawn_card, _ = await shopper(new_customer, client)
    await grant(client, withdrawn)
    await withdraw(client, withdrawn)
    lapsed, lapsed_card, _ = await shopper(new_customer, client)
    await grant(client, lapsed)
    await conn.execute(
        "UPDATE consents SET expires_at = now() - interval '1 second' "
        "WHERE customer_id = $1 AND audience = 'pos'",
        uuid.UUID(lapsed.id),
    )
    coded, _, _ = await shopper(new_customer, client)
    stale = await checkout_code(client, coded, ttl_seconds=30)
    await conn.execute(
        "UPDATE checkout_codes SET expires_at = now() - interval '1 second' WHERE code_hash = $1",
        vault.index.checkout_code(stale["code"]),
    )
    erased, erased_card, _ = await shopper(new_customer, client)
    await grant(client, erased)
    assert (await look_up(client, key, card=erased_card)).status_code == 200
    before = await disclosures(conn, erased.id)
    await erase_behind_the_services_back(conn, erased.id)

    misses = {
        "unknown card": await look_up(client, key, card=fresh_card()),
        "card never granted": await look_up(client, key, card=never_granted_card),
        "card withdrawn": await look_up(client, key, card=withdrawn_card),
        "card with lapsed grant": await look_up(client, key, card=lapsed_card),
        "erased customer's card": await look_up(client, key, card=erased_card),
        "expired code": await look_up(client, key, code=stale["code"]),
        "unknown code": await look_up(client, key, code=a_code_nobody_was_given()),
    }

    answers = {(r.status_code, r.headers["content-type"], r.content) for r in misses.values()}
    assert len(answers) == 1, {name: r.text for name, r in misses.items()}
    status, content_type, body = answers.pop()
    assert status == 404
    assert content_type.startswith("application/problem+json")
    assert NOT_FOUND_DETAIL.encode() in body
    for customer in (never_granted, withdrawn, lapsed, coded):
        assert await disclosures(conn, customer.id) == 0
    assert await disclosures(conn, erased.id) == before  # nothing new about the erased


@pytest.mark.parametrize(
    "typed",
    [
        "{0}{1}{2}{3}",
        "{0} {1} {2} {3}",
        "{0}-{1}-{2}-{3}",
        " {0}-{1} {2}  {3} ",
        "{0}{1}-{2}{3}",
    ],
)
async def test_the_till_accepts_a_card_typed_with_spaces_or_dashes(
    client, conn, new_customer, typed
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    _, key = await till_key(conn)

    response = await look_up(client, key, card=typed.format(*card.split()))

    assert response.status_code == 200, response.text
    assert len(response.json()["preferences"]) == 3


@pytest.mark.parametrize(
    "digits", [ARABIC_INDIC, FULLWIDTH, DEVANAGARI], ids=["arabic-indic", "fullwidth", "devanagari"]
)
async def test_a_card_in_other_scripts_digits_is_refused(client, conn, new_customer, digits):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    _, key = await till_key(conn)

    for written in (
        card.translate(digits),
        card.replace(" ", "").translate(digits),
        card[:-1].replace(" ", "") + card[-1].translate(digits),
    ):
        response = await look_up(client, key, card=written)
        assert response.status_code == 400, written
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await disclosures(conn, customer.id) == 0


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"card": None, "code": None},
        {"card": "6012 3456 7890", "code": "ABCD2345"},
        {"card": "12345"},
        {"card": "6012 3456 7890 123x"},
        {"card": "6012\n3456"},
        {"card": "6" * 25},
        {"code": "ABCD234"},
        {"code": "ABCD2340"},
        {"code": "ABCD23456"},
        {"card": 601234567890},
        {"phone": "0123456789"},
    ],
    ids=[
        "neither",
        "both-null",
        "both",
        "too-short",
        "letter",
        "control-character",
        "too-long",
        "short-code",
        "ambiguous-code-character",
        "long-code",
        "number-not-text",
        "unknown-key",
    ],
)
async def test_a_lookup_needs_exactly_one_well_formed_card_or_code(client, conn, body):
    _, key = await till_key(conn)

    response = await client.post(
        "/v1/pos/lookup", headers={"Authorization": f"Bearer {key}"}, json=body
    )

    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_till_that_keeps_missing_is_throttled_and_another_store_is_not(
    client, conn, new_customer, settings
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    _, guesser = await till_key(conn)
    _, neighbour = await till_key(conn)

    for _ in range(settings.lookup_misses_per_minute_per_key):
        assert (await look_up(client, guesser, card=fresh_card())).status_code == 404
    throttled = await look_up(client, guesser, card=fresh_card())
    also_throttled = await look_up(client, guesser, card=card)

    for response in (throttled, also_throttled):
        assert response.status_code == 429
        assert response.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(response.headers["retry-after"]) <= 60
    assert (await look_up(client, neighbour, card=card)).status_code == 200
    assert (await look_up(client, neighbour, card=fresh_card())).status_code == 404


async def test_a_store_whose_tills_keep_missing_is_throttled_as_a_whole(
    client, conn, new_customer, settings
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    store = fresh_store()
    per_key, per_store = (
        settings.lookup_misses_per_minute_per_key,
        settings.lookup_misses_per_minute_per_store,
    )
    _, last_till = await till_key(conn, store, name="Till 9")
    assert (await look_up(client, last_till, card=fresh_card())).status_code == 404
    misses = 1
    while misses < per_store:
        _, till = await till_key(conn, store)
        batch = min(per_key, per_store - misses)
        answers = await asyncio.gather(
            *(look_up(client, till, card=fresh_card()) for _ in range(batch))
        )
        assert [a.status_code for a in answers] == [404] * batch
        misses += batch

    throttled = await look_up(client, last_till, card=card)

    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    _, elsewhere = await till_key(conn)
    assert (await look_up(client, elsewhere, card=card)).status_code == 200


async def test_malformed_lookups_do_not_count_as_misses(client, conn, settings):
    _, key = await till_key(conn)

    for _ in range(settings.lookup_misses_per_minute_per_key + 5):
        assert (await look_up(client, key, card="not a card")).status_code == 400

    assert (await look_up(client, key, card=fresh_card())).status_code == 404


async def test_a_customer_with_a_grant_and_no_preferences_is_found_with_an_empty_list(
    client, conn, new_customer
):
    card = fresh_card()
    customer = await new_customer(card=card)
    await grant(client, customer)
    _, key = await till_key(conn)

    response = await look_up(client, key, card=card)

    assert response.status_code == 200
    assert response.json()["preferences"] == []


async def test_the_till_sees_its_preferences_numbered_without_gaps_and_without_ids(
    client, conn, new_customer
):
    """Ranks 1 and 3 would tell the till that a preference it is not shown exists."""
    customer, card, (chinos, _, boots) = await shopper(new_customer, client)
    await grant(client, customer, preferences=[chinos["id"], boots["id"]])
    _, key = await till_key(conn)

    response = await look_up(client, key, card=card)

    assert response.status_code == 200, response.text
    shown = response.json()["preferences"]
    assert [(p["rank"], p["product"]["sku"]) for p in shown] == [
        (1, chinos["product"]["sku"]),
        (2, boots["product"]["sku"]),
    ]
    assert all("id" not in p for p in shown)


async def metric_values(client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_each_lookup_by_route_status_and_outcome(client, conn, new_customer):
    _, key = await till_key(conn)
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    route = frozenset({("method", "POST"), ("route", "/v1/pos/lookup")})
    answered = ("prefs_http_requests_total", route | {("status", "200")})
    missed = ("prefs_http_requests_total", route | {("status", "404")})
    timed = ("prefs_http_request_duration_seconds_count", route)
    found = ("prefs_pos_lookups_total", frozenset({("via", "card"), ("outcome", "found")}))
    before = await metric_values(client)
    assert (await look_up(client, key, card=card)).status_code == 200
    assert (await look_up(client, key, card=card)).status_code == 200
    assert (await look_up(client, key, card=fresh_card())).status_code == 404
    after = await metric_values(client)
    assert after[answered] - before.get(answered, 0) == 2
    assert after[missed] - before.get(missed, 0) == 1
    assert after[timed] - before.get(timed, 0) == 3
    assert after[found] - before.get(found, 0) == 2
