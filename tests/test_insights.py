"""Discontinued demand: merchandising learns how many opted-in customers want a dropped product
back, only for groups of at least k, from counting data that holds no customer id."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.conftest import bearer
from tests.partner_steps import grant, insights_key, keep, withdraw

SIZE = {"waist": "34", "leg": "34", "fit": "regular"}


def chinos_with(sku: str, status: str = "discontinued") -> dict[str, Any]:
    """The chinos under a sku no other test uses, so this test's group is its own."""
    return {
        "product": {"sku": sku, "name": "Classic Chino", "brand": "Acme", "category": "trousers"},
        "attributes": {**SIZE, "colour": "khaki"},
        "note": "Please bring them back.",
        "status": status,
    }


async def demand_for(client: httpx.AsyncClient, api_key: str, sku: str) -> list[dict[str, Any]]:
    """The released groups for one sku."""
    response = await client.get("/v1/insights/discontinued-demand", headers=bearer(api_key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["k"] == 10
    assert all(group["customers"] >= 10 for group in body["groups"])
    return [group for group in body["groups"] if group["product"]["sku"] == sku]


async def opted_in(
    client: httpx.AsyncClient,
    new_customer: Any,
    sku: str,
    status: str = "discontinued",
    insights: bool = True,
) -> tuple[Any, dict[str, Any]]:
    customer = await new_customer()
    preference = await keep(client, customer, chinos_with(sku, status))
    if insights:
        await grant(client, customer, "insights", ["product", "attributes"])
    return customer, preference


async def test_a_group_is_released_only_once_k_opted_in_customers_want_it(
    client, conn, new_customer, settings
):
    assert settings.k_anonymity == 10
    _, api_key = await insights_key(conn)
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"

    nine = [await opted_in(client, new_customer, sku) for _ in range(9)]
    assert await demand_for(client, api_key, sku) == []

    # Without an insights grant a customer never counts, however discontinued the item.
    await opted_in(client, new_customer, sku, insights=False)
    assert await demand_for(client, api_key, sku) == []
    # Nor does a preference the catalogue still has.
    tenth, available = await opted_in(client, new_customer, sku, status="available")
    assert await demand_for(client, api_key, sku) == []

    # The catalogue drops it: now it counts, and the group of ten is released.
    dropped = await client.patch(
        f"/v1/me/preferences/{available['id']}",
        headers={**tenth.headers, "If-Match": f'"{available["version"]}"'},
        json={"status": "discontinued"},
    )
    assert dropped.status_code == 200, dropped.text
    assert await demand_for(client, api_key, sku) == [
        {
            "product": {
                "sku": sku,
                "name": "Classic Chino",
                "brand": "Acme",
                "category": "trousers",
            },
            "size": SIZE,
            "customers": 10,
        }
    ]

    # One withdraws: back under k, gone at once.
    leaver, _ = nine[0]
    await withdraw(client, leaver, "insights")
    assert await demand_for(client, api_key, sku) == []
    await grant(client, leaver, "insights", ["product", "attributes"])
    assert [group["customers"] for group in await demand_for(client, api_key, sku)] == [10]


async def test_each_customer_counts_once_per_product_and_size(client, conn, new_customer):
    _, api_key = await insights_key(conn)
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    # The same chinos kept twice by one customer still count as one customer.
    keen, _ = customers[0]
    await keep(client, keen, chinos_with(sku))
    # A different size is a different group (and too small to release).
    other_size = await new_customer()
    await keep(client, other_size, {**chinos_with(sku), "attributes": {"waist": "30", "leg": "30"}})
    await grant(client, other_size, "insights", ["product", "attributes"])

    groups = await demand_for(client, api_key, sku)
    assert [(group["size"], group["customers"]) for group in groups] == [(SIZE, 10)]


async def test_deleting_the_preference_takes_the_contribution_back(client, conn, new_customer):
    _, api_key = await insights_key(conn)
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    assert [group["customers"] for group in await demand_for(client, api_key, sku)] == [10]

    customer, preference = customers[-1]
    deleted = await client.delete(
        f"/v1/me/preferences/{preference['id']}",
        headers={**customer.headers, "If-Match": f'"{preference["version"]}"'},
    )
    assert deleted.status_code == 204, deleted.text
    assert await demand_for(client, api_key, sku) == []


async def test_a_grant_without_the_product_field_does_not_count(client, conn, new_customer):
    _, api_key = await insights_key(conn)
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    for _ in range(9):
        await opted_in(client, new_customer, sku)
    sizes_only, _ = await opted_in(client, new_customer, sku, insights=False)
    await grant(client, sizes_only, "insights", ["attributes"])
    assert await demand_for(client, api_key, sku) == []
    await grant(client, sizes_only, "insights", ["product", "attributes"])
    assert [group["customers"] for group in await demand_for(client, api_key, sku)] == [10]


async def test_the_demand_tables_hold_no_customer_id(client, conn, new_customer):
    _, api_key = await insights_key(conn)
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    assert [group["customers"] for group in await demand_for(client, api_key, sku)] == [10]

    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name IN ('demand_contributions', 'demand_groups')"
    )
    assert {(c["table_name"], c["column_name"]) for c in columns} == {
        ("demand_contributions", "pseudonym"),
        ("demand_contributions", "group_hash"),
        ("demand_groups", "group_hash"),
        ("demand_groups", "label_ct"),
    }
    assert "uuid" not in {c["data_type"] for c in columns}

    dump = "\n".join(
        [row[0] for row in await conn.fetch("SELECT t::text FROM demand_contributions t")]
        + [row[0] for row in await conn.fetch("SELECT t::text FROM demand_groups t")]
    ).lower()
    assert dump
    for customer, _ in customers:
        ident = uuid.UUID(customer.id)
        assert str(ident) not in dump
        assert ident.hex not in dump
        assert customer.subject.lower() not in dump
    # The group labels are sealed too: no product names or sizes in the clear.
    assert sku.lower() not in dump
    assert "classic chino" not in dump
    assert sku.encode().hex() not in dump
