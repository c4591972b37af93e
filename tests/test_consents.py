"""Consent: nothing shared until granted, exactly the granted fields of exactly the granted
preferences, withdrawal and expiry on the very next request, checkout codes, receipts."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prefs import credentials
from prefs.consents import ledger
from prefs.retention import service as retention
from tests.support.customer import CHINOS, checkout_code, grant, keep_all, preferences_of, withdraw
from tests.support.till import NOT_FOUND_DETAIL, look_up, shopper, till_key

FIELDS = ("product", "attributes", "note")
FIELD_SUBSETS = [list(c) for n in (1, 2, 3) for c in itertools.combinations(FIELDS, n)]
JACKET: dict[str, Any] = {
    "product": {"sku": "FJ-JACKET-L", "name": "Field Jacket", "brand": "Acme", "category": "coats"},
    "attributes": {"size": "L", "colour": "olive"},
    "note": "The one with the inside pocket.",
    "rank": 1,
}


def as_shared(preference: dict[str, Any], fields: list[str], rank: int) -> dict[str, Any]:
    """What the till, granted ``fields``, should see of one of the customer's preferences shown
    ``rank``-th: no id, ranks 1..n among what it is shown."""
    shared = {"rank": rank, "status": preference["status"]}
    shared.update({field: preference[field] for field in fields})
    return shared


def in_the_future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def until_past(moment: str) -> None:
    """Sleep until ``moment`` (ISO 8601) has passed."""
    left = (datetime.fromisoformat(moment) - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(0.0, left) + 0.3)


async def test_nothing_is_shared_until_the_customer_grants_it(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)

    consents = await client.get("/v1/me/consents", headers=customer.headers)
    assert consents.status_code == 200
    assert consents.json() == {"items": [], "next": None}
    refused = await look_up(client, key, card=card)
    assert refused.status_code == 404
    assert refused.json()["detail"] == NOT_FOUND_DETAIL


@pytest.mark.parametrize("scope", ["all", "chosen"])
@pytest.mark.parametrize("fields", FIELD_SUBSETS, ids="+".join)
async def test_the_till_sees_exactly_the_granted_fields_of_the_granted_preferences(
    client, conn, new_customer, fields, scope
):
    customer, card, _ = await shopper(new_customer, client)
    await keep_all(client, customer, JACKET)  # kept last, ranked first
    mine = await preferences_of(client, customer)
    assert [p["product"]["name"] for p in mine] == [
        "Field Jacket",
        "Classic Chino",
        "Oxford Shirt",
        "Desert Boot",
    ]
    if scope == "all":
        chosen = mine
        await grant(client, customer, fields=fields, preferences="all")
    else:
        jacket, _, shirt, boots = mine
        chosen = [jacket, shirt]
        # Named in another order than their ranks: the till still gets them ranked.
        await grant(client, customer, fields=fields, preferences=[shirt["id"], jacket["id"]])
        hidden = boots
    _, key = await till_key(conn)

    response = await look_up(client, key, card=card)

    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["via"] == "card"
    assert seen["fields"] == fields
    assert seen["preferences"] == [
        as_shared(p, fields, rank) for rank, p in enumerate(chosen, start=1)
    ]
    for shown in seen["preferences"]:
        for absent in set(FIELDS) - set(fields):
            assert absent not in shown  # absent, not null
    if scope == "chosen":
        assert hidden["id"] not in response.text
        assert hidden["product"]["name"] not in response.text


async def test_a_granted_field_that_is_empty_is_shown_as_null(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["note"])
    _, key = await till_key(conn)

    seen = (await look_up(client, key, card=card)).json()["preferences"]

    assert [p["note"] for p in seen] == [
        CHINOS["note"],
        None,
        "Half a size up in winter, for thick socks.",
    ]


async def test_a_changed_grant_applies_on_the_very_next_lookup(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    await grant(client, customer, fields=["product", "attributes", "note"])
    before = (await look_up(client, key, card=card)).json()
    assert all({"product", "attributes", "note"} <= set(p) for p in before["preferences"])

    await grant(client, customer, fields=["product"])
    after = (await look_up(client, key, card=card)).json()

    assert after["fields"] == ["product"]
    assert all(set(p) == {"rank", "status", "product"} for p in after["preferences"])
    assert "Half a size up" not in str(after)


async def test_withdrawn_consent_hides_preferences_at_the_till_on_the_next_request(
    client, conn, new_customer
):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    await grant(client, customer)
    assert (await look_up(client, key, card=card)).status_code == 200

    await withdraw(client, customer)

    refused = await look_up(client, key, card=card)
    assert refused.status_code == 404
    assert refused.json()["detail"] == NOT_FOUND_DETAIL
    listed = await client.get("/v1/me/consents", headers=customer.headers)
    assert listed.json() == {"items": [], "next": None}


async def test_withdrawing_what_is_not_in_force_is_an_idempotent_204(client, new_customer):
    customer = await new_customer()
    never = await client.delete("/v1/me/consents/pos", headers=customer.headers)
    assert (never.status_code, never.content) == (204, b"")
    await grant(client, customer)
    first = await client.delete("/v1/me/consents/pos", headers=customer.headers)
    assert first.status_code == 200, first.text
    assert first.json()["receipt"]["state"] == "ConsentWithdrawn"
    again = await client.delete("/v1/me/consents/pos", headers=customer.headers)
    assert (again.status_code, again.content) == (204, b"")
    # nothing withdrawn, nothing recorded: one grant, one withdrawal
    history = await client.get("/v1/me/consents/history", headers=customer.headers)
    assert [e["receipt"]["state"] for e in history.json()["items"]] == [
        "ConsentWithdrawn",
        "ConsentGiven",
    ]


async def test_expired_consent_hides_preferences_and_is_recorded_as_expired(
    client, conn, vault, new_customer
):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    granted = await grant(client, customer, fields=["product"], expires_at=in_the_future(2))
    assert (await look_up(client, key, card=card)).status_code == 200

    expires_at = datetime.fromisoformat(granted["consent"]["expires_at"])
    await until_past(granted["consent"]["expires_at"])

    refused = await look_up(client, key, card=card)
    assert refused.status_code == 404
    assert refused.json()["detail"] == NOT_FOUND_DETAIL
    # Hidden from the expiry instant, before the expiry job has recorded anything; reading
    # writes nothing (expiry is one job, not a side effect of reads).
    assert (await client.get("/v1/me/consents", headers=customer.headers)).json() == {
        "items": [],
        "next": None,
    }
    before = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    assert [e["receipt"]["state"] for e in before["items"]] == ["ConsentGiven"]
    assert await retention.expire(conn, vault, "prefs") >= 1
    history = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    assert [e["receipt"]["state"] for e in history["items"]] == ["ConsentExpired", "ConsentGiven"]
    expired = history["items"][0]["receipt"]
    assert expired["audience"] == "pos"
    assert expired["fields"] == ["product"]
    assert datetime.fromisoformat(expired["expires_at"]) == expires_at
    listed = await client.get("/v1/me/consents", headers=customer.headers)
    assert listed.json() == {"items": [], "next": None}
    again = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    assert [e["receipt"]["state"] for e in again["items"]] == ["ConsentExpired", "ConsentGiven"]


async def test_granting_again_after_expiry_records_the_expiry_first(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    granted = await grant(client, customer, fields=["product"], expires_at=in_the_future(2))
    await until_past(granted["consent"]["expires_at"])

    await grant(client, customer, fields=["attributes"])

    history = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    assert [e["receipt"]["state"] for e in history["items"]] == [
        "ConsentGiven",
        "ConsentExpired",
        "ConsentGiven",
    ]
    seen = (await look_up(client, key, card=card)).json()
    assert seen["fields"] == ["attributes"]


async def test_changes_made_at_the_same_moment_all_succeed_and_chain_in_order(
    client, conn, new_customer, vault
):
    customer = await new_customer()
    changes = 0
    for _ in range(10):
        await grant(client, customer, fields=["product"])
        answers = await asyncio.gather(
            client.put("/v1/me/consents/pos", headers=customer.headers, json={"fields": ["note"]}),
            client.delete("/v1/me/consents/pos", headers=customer.headers),
            client.put(
                "/v1/me/consents/insights", headers=customer.headers, json={"fields": ["product"]}
            ),
            client.get("/v1/me/consents", headers=customer.headers),
        )
        assert [a.status_code for a in answers] in ([200, 200, 200, 200], [200, 404, 200, 200])
        changes += 1 + sum(a.status_code == 200 for a in answers[:3])

    who = uuid.UUID(customer.id)
    head = await conn.fetchrow(
        "SELECT ledger_seq, ledger_head FROM customers WHERE customer_id = $1", who
    )
    assert head["ledger_seq"] == changes
    assert (
        await ledger.verify_customer(
            conn, vault.index, who, head["ledger_seq"], head["ledger_head"]
        )
        is None
    )


async def test_the_consents_list_shows_each_grant_in_force_with_who_receives_it(
    client, conn, new_customer
):
    customer = await new_customer()
    [chinos] = await keep_all(client, customer, CHINOS)
    partner, _ = await credentials.create(conn, "partner", f"Tailor {uuid.uuid4().hex[:6]}")
    await grant(client, customer, "pos", fields=["product", "attributes"])
    await grant(
        client,
        customer,
        f"partner:{partner.partner_id}",
        fields=["attributes"],
        preferences=[chinos["id"]],
        expires_at=in_the_future(3600),
    )

    listed = (await client.get("/v1/me/consents", headers=customer.headers)).json()["items"]

    by_audience = {c["audience"]: c for c in listed}
    assert set(by_audience) == {"pos", f"partner:{partner.partner_id}"}
    assert by_audience["pos"]["fields"] == ["product", "attributes"]
    assert by_audience["pos"]["preferences"] == "all"
    assert by_audience["pos"]["expires_at"] is None
    tailor = by_audience[f"partner:{partner.partner_id}"]
    assert tailor["recipient"] == partner.name
    assert tailor["preferences"] == [chinos["id"]]
    assert tailor["expires_at"] is not None


# --- checkout codes ---------------------------------------------------------------------------


async def test_a_checkout_code_reveals_only_its_chosen_fields_and_preferences(
    client, conn, new_customer, vault
):
    customer, _, kept = await shopper(new_customer, client)
    chinos, shirt, boots = kept
    _, key = await till_key(conn)
    made = await checkout_code(
        client, customer, fields=["attributes"], preferences=[boots["id"], chinos["id"]]
    )

    # Read aloud and typed at the till: lower case and a separator still work.
    typed = f"{made['code'][:4].lower()}-{made['code'][4:].lower()}"
    response = await look_up(client, key, code=typed)

    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["via"] == "code"
    assert seen["fields"] == ["attributes"]
    assert seen["preferences"] == [
        as_shared(chinos, ["attributes"], 1),
        as_shared(boots, ["attributes"], 2),
    ]
    assert shirt["id"] not in response.text
    assert "Classic Chino" not in response.text


async def test_a_checkout_code_works_without_a_till_grant_and_the_card_still_does_not(
    client, conn, new_customer
):
    customer, card, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    made = await checkout_code(client, customer, fields=["product"])

    assert (await look_up(client, key, code=made["code"])).status_code == 200
    assert (await look_up(client, key, card=card)).status_code == 404


async def test_a_checkout_code_is_short_readable_and_stored_only_as_a_keyed_hash(
    client, conn, new_customer, vault, settings
):
    customer = await new_customer()
    made = await checkout_code(client, customer, fields=["product"])

    code = made["code"]
    assert len(code) == 8
    assert set(code) <= set("23456789ABCDEFGHJKMNPQRSTWXYZ")
    expires_in = datetime.fromisoformat(made["expires_at"]) - datetime.now(UTC)
    assert timedelta(0) < expires_in <= timedelta(seconds=settings.checkout_code_ttl_seconds)
    row = await conn.fetchrow(
        "SELECT * FROM checkout_codes WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert row["code_hash"] == vault.index.checkout_code(code)
    assert code.encode() not in b"".join(str(v).encode() for v in row.values())


async def test_a_checkout_code_stops_working_when_it_expires(client, conn, new_customer, vault):
    customer, _, _ = await shopper(new_customer, client)
    _, key = await till_key(conn)
    made = await checkout_code(client, customer, fields=["product"], ttl_seconds=30)
    assert (await look_up(client, key, code=made["code"])).status_code == 200

    await conn.execute(
        "UPDATE checkout_codes SET expires_at = now() - interval '1 second' WHERE code_hash = $1",
        vault.index.checkout_code(made["code"]),
    )

    refused = await look_up(client, key, code=made["code"])
    assert refused.status_code == 404
    assert refused.json()["detail"] == NOT_FOUND_DETAIL


@pytest.mark.parametrize("ttl", [0, 29, 901])
async def test_a_checkout_code_lifetime_outside_limits_is_refused(client, new_customer, ttl):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/checkout-codes",
        headers=customer.headers,
        json={"fields": ["product"], "ttl_seconds": ttl},
    )
    assert response.status_code == 400


# --- receipts ---------------------------------------------------------------------------------


def assert_receipt(receipt: dict[str, Any], customer_id: str, state: str, controller: str) -> None:
    assert uuid.UUID(receipt["receipt_id"])
    stamped = datetime.fromisoformat(receipt["timestamp"])
    assert abs(datetime.now(UTC) - stamped) < timedelta(minutes=1)
    assert receipt["principal"] == customer_id
    # the controller, and the terms in force when the consent changed (kept in the receipt)
    assert receipt["controller"]["name"] == controller
    assert receipt["controller"]["policy_url"] and receipt["controller"]["jurisdiction"]
    assert receipt["state"] == state
    assert receipt["version"] == "KI-CR-v1.1.0"
    assert receipt["purposes"]
    assert all(p["dpv"] and p["purpose"] for p in receipt["purposes"])


async def test_a_till_grant_and_its_withdrawal_each_return_a_receipt(
    client, new_customer, settings
):
    customer = await new_customer()

    given = await grant(client, customer, fields=["product", "attributes", "note"])
    withdrawn = await withdraw(client, customer)

    receipt = given["receipt"]
    assert_receipt(receipt, customer.id, "ConsentGiven", settings.controller)
    assert receipt["purposes"][0]["dpv"] == ["ServicePersonalisation"]
    assert receipt["purposes"][0]["third_party_disclosure"] is False
    assert receipt["pii_categories"] == [
        "PurchasesAndSpendingHabit",
        "PhysicalCharacteristic",
        "Preference",
    ]
    assert receipt["recipient"]["kind"] == "pos"
    assert receipt["recipient"]["name"]
    assert receipt["fields"] == ["product", "attributes", "note"]
    assert receipt["preferences"] == "all"
    assert given["consent"]["receipt_id"] == receipt["receipt_id"]
    assert given["ledger"]["receipt"] == receipt

    gone = withdrawn["receipt"]
    assert_receipt(gone, customer.id, "ConsentWithdrawn", settings.controller)
    assert gone["receipt_id"] != receipt["receipt_id"]
    assert gone["purposes"][0]["dpv"] == ["ServicePersonalisation"]
    assert withdrawn["consent"] is None


async def test_a_partner_grant_receipt_names_the_partner_and_order_management(
    client, conn, new_customer, settings
):
    customer = await new_customer()
    partner, _ = await credentials.create(conn, "partner", "Made-to-measure Tailor")

    given = await grant(client, customer, f"partner:{partner.partner_id}", fields=["attributes"])

    receipt = given["receipt"]
    assert_receipt(receipt, customer.id, "ConsentGiven", settings.controller)
    assert "CustomerOrderManagement" in receipt["purposes"][0]["dpv"]
    assert receipt["purposes"][0]["third_party_disclosure"] is True
    assert receipt["recipient"] == {
        "kind": "partner",
        "name": "Made-to-measure Tailor",
        "id": str(partner.partner_id),
    }
    assert receipt["pii_categories"] == ["PhysicalCharacteristic"]


async def test_an_insights_grant_receipt_names_product_improvement(client, new_customer, settings):
    customer = await new_customer()

    given = await grant(client, customer, "insights", fields=["product", "attributes"])

    receipt = given["receipt"]
    assert_receipt(receipt, customer.id, "ConsentGiven", settings.controller)
    assert receipt["recipient"]["kind"] == "insights"
    assert receipt["purposes"][0]["dpv"] == ["ImproveExistingProductsAndServices"]
    assert receipt["pii_categories"] == ["PurchasesAndSpendingHabit", "PhysicalCharacteristic"]


# --- refused grants ---------------------------------------------------------------------------


def assert_problem(response: Any, *statuses: int) -> None:
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == response.status_code


@pytest.mark.parametrize(
    "audience",
    ["everyone", "POS", "pos2", "partner", "partner:tailor", "partner:" + "0" * 36, "insights:x"],
)
async def test_an_unknown_audience_is_refused(client, new_customer, audience):
    customer = await new_customer()
    put = await client.put(
        f"/v1/me/consents/{audience}", headers=customer.headers, json={"fields": ["product"]}
    )
    delete = await client.delete(f"/v1/me/consents/{audience}", headers=customer.headers)
    assert_problem(put, 400, 404)
    assert_problem(delete, 400, 404)
    assert (await client.get("/v1/me/consents", headers=customer.headers)).json() == {
        "items": [],
        "next": None,
    }


async def test_a_partner_that_does_not_exist_is_not_found(client, new_customer):
    customer = await new_customer()
    audience = f"partner:{uuid.uuid4()}"
    put = await client.put(
        f"/v1/me/consents/{audience}", headers=customer.headers, json={"fields": ["product"]}
    )
    delete = await client.delete(f"/v1/me/consents/{audience}", headers=customer.headers)
    assert_problem(put, 404)
    assert delete.status_code == 204  # no consent to it in force: nothing to withdraw
    history = await client.get("/v1/me/consents/history", headers=customer.headers)
    assert history.json()["items"] == []


async def test_a_partner_is_named_by_its_id_as_written_in_the_directory(client, conn, new_customer):
    customer = await new_customer()
    partner, _ = await credentials.create(conn, "partner", "Cobbler")

    shouted = await client.put(
        f"/v1/me/consents/partner:{str(partner.partner_id).upper()}",
        headers=customer.headers,
        json={"fields": ["product"]},
    )

    assert_problem(shouted, 400, 404)
    assert (await client.get("/v1/me/consents", headers=customer.headers)).json() == {
        "items": [],
        "next": None,
    }


@pytest.mark.parametrize(
    "body",
    [
        {"fields": []},
        {},
        {"fields": ["price"]},
        {"fields": ["product"], "preferences": []},
        {"fields": ["product"], "preferences": "some"},
        {"fields": ["product"], "preferences": ["not-a-uuid"]},
        {"fields": ["product"], "expires_at": "2001-01-01T00:00:00Z"},
        {"fields": ["product"], "expires_at": "2999-01-01T00:00:00"},
        {"fields": ["product"], "share_with": "everyone"},
    ],
    ids=[
        "empty-fields",
        "no-fields",
        "unknown-field",
        "no-preferences",
        "not-all",
        "bad-preference-id",
        "expired",
        "no-time-zone",
        "unknown-key",
    ],
)
async def test_a_malformed_grant_is_refused_and_shares_nothing(client, new_customer, body):
    customer = await new_customer()
    response = await client.put("/v1/me/consents/pos", headers=customer.headers, json=body)
    assert_problem(response, 400)
    assert (await client.get("/v1/me/consents", headers=customer.headers)).json() == {
        "items": [],
        "next": None,
    }


async def test_a_grant_naming_another_customers_preference_is_refused(client, new_customer):
    alice, bob = await new_customer(), await new_customer()
    [alices] = await keep_all(client, alice, CHINOS)
    [bobs] = await keep_all(client, bob, CHINOS)

    response = await client.put(
        "/v1/me/consents/pos",
        headers=bob.headers,
        json={"fields": ["product"], "preferences": [bobs["id"], alices["id"]]},
    )
    code = await client.post(
        "/v1/me/checkout-codes",
        headers=bob.headers,
        json={"fields": ["product"], "preferences": [alices["id"]]},
    )

    assert_problem(response, 400)
    assert_problem(code, 400)
    assert alices["id"] not in response.text
    assert (await client.get("/v1/me/consents", headers=bob.headers)).json() == {
        "items": [],
        "next": None,
    }


async def test_consent_endpoints_need_a_signed_in_customer(client):
    for response in (
        await client.get("/v1/me/consents"),
        await client.put("/v1/me/consents/pos", json={"fields": ["product"]}),
        await client.delete("/v1/me/consents/pos"),
        await client.get("/v1/me/consents/history"),
        await client.post("/v1/me/checkout-codes", json={"fields": ["product"]}),
    ):
        assert_problem(response, 401)
