"""A product its customer types from memory needs no SKU: it is kept, listed, shown at the till,
to partners and stores, exported, and never matched to a purchase or a catalogue status."""

from __future__ import annotations

from typing import Any

from tests.support.customer import CHINOS, grant, keep, preferences_of
from tests.support.partner import partner_key, reference, reorder
from tests.support.stores import HIGH_STREET, drain
from tests.support.till import fresh_card, look_up, till_key
from tests.test_purchases import buy, catalogue_product, fresh_sku, item, let_tills_add

REMEMBERED: dict[str, Any] = {
    "product": {"name": "The blue linen shirt from last summer", "brand": "Acme"},
    "attributes": {"size": "M"},
}


async def test_a_product_without_a_sku_is_kept_and_shown_everywhere(client, conn, new_customer):
    card = fresh_card()
    customer = await new_customer(card=card)
    await keep(client, customer, CHINOS)
    remembered = await keep(client, customer, REMEMBERED)
    assert remembered["product"] == {
        "sku": None,
        "name": REMEMBERED["product"]["name"],
        "brand": "Acme",
        "category": None,
    }
    assert remembered["status"] == "available"
    # the list asks the catalogue about the SKUs it has, beside one without
    mine = await preferences_of(client, customer)
    assert [p["product"]["sku"] for p in mine] == [CHINOS["product"]["sku"], None]

    await grant(client, customer)
    _, till = await till_key(conn)
    at_till = await look_up(client, till, card=card)
    assert at_till.status_code == 200, at_till.text
    assert at_till.json()["preferences"][1]["product"]["sku"] is None

    partner, partner_api_key = await partner_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product", "attributes"])
    ref = await reference(client, customer, partner.partner_id)
    read = await client.get(
        f"/v1/partner/customers/{ref}/preferences",
        headers={"Authorization": f"Bearer {partner_api_key}"},
    )
    assert read.status_code == 200, read.text
    assert read.json()["items"][1]["product"]["name"] == REMEMBERED["product"]["name"]

    placed = await reorder(client, customer, remembered["id"])
    assert placed.status_code == 201, placed.text
    _, store_till = await till_key(conn, HIGH_STREET)
    seen, _ = await drain(client, store_till)
    [at_store] = [r for r in seen if r["id"] == placed.json()["id"]]
    assert at_store["item"]["product"]["sku"] is None

    export = await client.get("/v1/me/export", headers=customer.headers)
    assert export.status_code == 200, export.text
    assert [p["product"]["sku"] for p in export.json()["preferences"]] == [
        CHINOS["product"]["sku"],
        None,
    ]


async def test_a_purchase_never_counts_towards_a_product_without_a_sku(client, conn, new_customer):
    card = fresh_card()
    customer = await new_customer(card=card)
    await keep(client, customer, {**REMEMBERED, "attributes": {"waist": "34", "leg": "34"}})
    await let_tills_add(client, customer)
    _, till = await till_key(conn)
    sku = fresh_sku()
    await catalogue_product(conn, sku)
    bought = await buy(client, till, card=card, items=[item(sku)])
    assert bought.status_code == 200, bought.text
    assert bought.json() == {"added": 1, "updated": 0, "skipped": 0}
    typed, added = await preferences_of(client, customer)
    assert (typed["product"]["sku"], typed["purchases"]) == (None, 0)
    assert added["product"]["sku"] == sku
