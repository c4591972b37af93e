"""Review of issue 18 (integrators and the page): each test is a problem found, failing until it
is fixed."""

from __future__ import annotations

import json
import uuid
from typing import Any

from prefs.catalogue import service as catalogue
from prefs.catalogue.schemas import ImportRow
from prefs.crypto import Vault
from tests.support.customer import CHINOS, grant, keep
from tests.support.partner import partner_key, reference
from tests.test_purchases import catalogue_product, fresh_sku

V1_0_ARRAY = "application/vnd.prefs.v1.0+json"


async def _contributions(conn: Any, vault: Vault, customer: Any) -> int:
    """How many demand groups the customer counts in (by their pseudonym, as insights does)."""
    pseudonym = vault.index.digest("demand", uuid.UUID(customer.id).bytes)
    count: int = await conn.fetchval(
        "SELECT count(*) FROM demand_contributions WHERE pseudonym = $1", pseudonym
    )
    return count


async def test_a_customer_cannot_set_a_catalogue_products_status_by_creating_it(
    client, conn, vault, new_customer
):
    """A status change for a product the catalogue knows is a 409 on PATCH, but POST took the
    customer's word and stored it: "discontinued" for a product the shop sells, which the reads
    hide behind the catalogue's "available" while anonymous demand (which reads the stored
    status) counts the customer as wanting a discontinued product back."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "available")
    await grant(client, customer, "insights", ["product", "attributes"])
    body = {**CHINOS, "product": {**CHINOS["product"], "sku": sku}, "status": "discontinued"}
    made = await client.post("/v1/me/preferences", headers=customer.headers, json=body)
    assert made.status_code == 409, made.text
    assert made.headers["content-type"] == "application/problem+json"
    assert "catalogue" in made.json()["detail"]
    assert await _contributions(conn, vault, customer) == 0
    # sending back the catalogue's own status is not a change
    same = await client.post(
        "/v1/me/preferences", headers=customer.headers, json={**body, "status": "available"}
    )
    assert same.status_code == 201, same.text


async def test_a_catalogue_product_added_without_a_status_keeps_the_catalogues(
    client, conn, vault, new_customer
):
    """The page sends no status for a product the catalogue knows (its box is locked); the
    preference was stored "available" whatever the catalogue said, so a product the catalogue
    has discontinued never counted in the demand for discontinued products."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "discontinued")
    await grant(client, customer, "insights", ["product", "attributes"])
    body = {"product": {"sku": sku, "name": "Classic Chino"}, "attributes": {"waist": "34"}}
    kept = await keep(client, customer, body)
    assert (kept["status"], kept["status_source"]) == ("discontinued", "catalogue")
    assert await _contributions(conn, vault, customer) == 1
    # without a SKU (or with one the catalogue does not know) the default stays "available"
    typed = await keep(client, customer, {"product": {"name": "Linen shirt"}})
    assert (typed["status"], typed["status_source"]) == ("available", "customer")


async def test_the_v1_0_array_is_chosen_by_media_type_rules_not_by_substring(
    client, conn, new_customer
):
    """Accept is matched as text: `q=0` (RFC 9110: not acceptable) still chose the v1.0 array, a
    client preferring application/json got the array, and an upper-case media type (media types
    are case-insensitive) or a made-up `…+jsonx` decided the other way round."""
    customer = await new_customer()
    await keep(client, customer)
    partner, api_key = await partner_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)

    async def shape(accept: str) -> str:
        read = await client.get(
            f"/v1/partner/customers/{ref}/preferences",
            headers={"Authorization": f"Bearer {api_key}", "Accept": accept},
        )
        assert read.status_code == 200, read.text
        return "array" if isinstance(read.json(), list) else "object"

    assert await shape(V1_0_ARRAY) == "array"
    assert await shape(V1_0_ARRAY.upper()) == "array"
    assert await shape(f"{V1_0_ARRAY}, application/json;q=0.5") == "array"
    assert await shape(f"{V1_0_ARRAY};q=0") == "object"
    assert await shape(f"application/json, {V1_0_ARRAY};q=0.1") == "object"
    assert await shape(f"{V1_0_ARRAY}x") == "object"
    assert await shape("*/*") == "object"


async def test_a_preference_moved_to_a_catalogue_sku_keeps_the_catalogues_status(
    client, conn, vault, new_customer
):
    """A PATCH that changes the SKU to one the catalogue knows, without a status, kept the
    customer's stored status: reads show the catalogue's "discontinued", but demand reads the
    stored "available" and never counts it."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "discontinued")
    await grant(client, customer, "insights", ["product", "attributes"])
    typed = await keep(client, customer, {"product": {"name": "Classic Chino"}})
    moved = await client.patch(
        f"/v1/me/preferences/{typed['id']}",
        headers={**customer.headers, "If-Match": f'"{typed["version"]}"'},
        json={"product": {"sku": sku}},
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["status"], moved.json()["status_source"]) == ("discontinued", "catalogue")
    assert await _contributions(conn, vault, customer) == 1


async def test_an_attribute_name_refused_says_what_a_name_may_be(client, new_customer):
    """Validation errors name what is allowed, except for an attribute's name: "Expected `str`
    matching regex … - at `key` in `$.attributes`" (the regex itself left out) tells a client
    nothing it can act on."""
    customer = await new_customer()
    refused = await client.post(
        "/v1/me/preferences",
        headers=customer.headers,
        json={"product": {"name": "Chino"}, "attributes": {"Waist": "34"}},
    )
    assert refused.status_code == 400, refused.text
    [error] = refused.json()["errors"]
    assert error["key"] == "attributes", error
    assert "allowed:" in error["message"] and "lower-case" in error["message"], error
    assert "allowed:" in refused.json()["detail"]


async def test_a_json_patch_is_refused_as_a_media_type_not_read_as_a_merge_patch(
    client, new_customer
):
    """Any `+json` media type was taken for a merge patch: a JSON Patch (RFC 6902) got "Expected
    `object`, got `array`", and a JSON Patch media type with an object body changed the
    preference. A PATCH names the patch formats it takes (415 with Accept-Patch, RFC 5789)."""
    customer = await new_customer()
    kept = await keep(client, customer, {"product": {"name": "Chino"}, "note": "as it was"})
    url = f"/v1/me/preferences/{kept['id']}"
    for body in ([{"op": "replace", "path": "/note", "value": "x"}], {"note": "x"}):
        refused = await client.patch(
            url,
            headers={
                **customer.headers,
                "If-Match": f'"{kept["version"]}"',
                "Content-Type": "application/json-patch+json",
            },
            content=json.dumps(body),
        )
        assert refused.status_code == 415, refused.text
        assert "application/merge-patch+json" in refused.headers["accept-patch"]
        assert "merge-patch" in refused.json()["detail"]
    after = await client.get(url, headers=customer.headers)
    assert after.json()["note"] == "as it was"


async def test_a_product_the_catalogue_discontinues_counts_in_demand_from_then_on(
    client, conn, vault, new_customer
):
    """Every read shows the catalogue's status from the next read on (README), but the demand
    for discontinued products does not follow: a customer keeping a product the shop has just
    discontinued, and sharing for insights, is not counted as wanting it back."""
    customer = await new_customer()
    sku = fresh_sku()
    await catalogue_product(conn, sku, "available")
    await grant(client, customer, "insights", ["product", "attributes"])
    await keep(client, customer, {"product": {"sku": sku, "name": "Classic Chino"}})
    assert await _contributions(conn, vault, customer) == 0
    row = ImportRow(sku=sku, name="Classic Chino", status="discontinued")
    await catalogue.import_rows(conn, vault, [(1, row)], catalogue.ImportReport())
    [shown] = (await client.get("/v1/me/preferences", headers=customer.headers)).json()["items"]
    assert shown["status"] == "discontinued"
    assert await _contributions(conn, vault, customer) == 1
