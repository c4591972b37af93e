"""A refused request names what would have been accepted: the allowed audiences, fields and
ranges, in the problem's detail as well as in its errors; and a request with an obvious default
needs no body at all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.support.customer import CHINOS, keep

PROBLEM_JSON = "application/problem+json"


def refused(response: Any) -> str:
    """The detail of a 400 problem, after checking it is one."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    detail: str = response.json()["detail"]
    return detail


async def test_an_unknown_audience_names_the_audiences_there_are(client, new_customer):
    customer = await new_customer()
    for method in ("PUT", "DELETE"):
        response = await client.request(
            method, "/v1/me/consents/marketing", headers=customer.headers, json=None
        )
        detail = refused(response)
        for audience in ("`pos`", "`insights`", "`purchases`", "`partner:<partner id>`"):
            assert audience in detail
        assert "regex" not in detail
        assert response.json()["errors"][0]["key"] == "audience"


@pytest.mark.parametrize(
    ("path", "method"),
    [("/v1/me/consents/pos", "PUT"), ("/v1/me/checkout-codes", "POST")],
)
async def test_an_unknown_field_names_the_fields_that_can_be_shared(
    client, new_customer, path, method
):
    customer = await new_customer()
    response = await client.request(
        method, path, headers=customer.headers, json={"fields": ["email"]}
    )
    detail = refused(response)
    assert "one of `attributes`, `note`, `product`" in detail
    assert response.json()["errors"] == [
        {
            "message": "Invalid enum value …; allowed: one of `attributes`, `note`, `product`",
            "source": "body",
            "key": "fields[0]",
        }
    ]


@pytest.mark.parametrize("body", [{}, None], ids=["empty object", "no body"])
async def test_a_consent_without_fields_says_which_fields_to_send(client, new_customer, body):
    customer = await new_customer()
    response = await client.put("/v1/me/consents/pos", headers=customer.headers, json=body)
    detail = refused(response)
    assert "fields is required" in detail
    assert "product, attributes and note" in detail


async def test_the_purchases_consent_needs_no_body(client, new_customer):
    customer = await new_customer()
    response = await client.put("/v1/me/consents/purchases", headers=customer.headers)
    assert response.status_code == 200, response.text
    assert response.json()["consent"]["audience"] == "purchases"


async def test_a_checkout_code_with_no_body_shows_product_and_attributes_of_everything(
    client, new_customer
):
    customer = await new_customer()
    await keep(client, customer, CHINOS)
    before = datetime.now(UTC)
    response = await client.post("/v1/me/checkout-codes", headers=customer.headers)
    assert response.status_code == 201, response.text
    code = response.json()
    assert code["fields"] == ["product", "attributes"]
    assert code["preferences"] == "all"
    assert code["keep_purchases"] is False
    lifetime = (datetime.fromisoformat(code["expires_at"]) - before).total_seconds()
    assert 299 <= lifetime <= 305  # the default lifetime, PREFS_CHECKOUT_CODE_TTL: 300 s


@pytest.mark.parametrize("ttl", [5, 901])
async def test_a_checkout_code_lifetime_out_of_range_names_the_range(client, new_customer, ttl):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/checkout-codes",
        headers=customer.headers,
        json={"fields": ["product"], "ttl_seconds": ttl},
    )
    detail = refused(response)
    assert "`ttl_seconds`" in detail
    assert "from 30 to 900" in detail
    assert "the service's default" in detail


async def test_a_checkout_code_lifetime_of_another_type_names_the_range(client, new_customer):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/checkout-codes", headers=customer.headers, json={"ttl_seconds": "soon"}
    )
    assert "from 30 to 900" in refused(response)


async def test_a_wrong_key_in_a_product_lists_the_keys_a_product_has(client, new_customer):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/preferences",
        headers=customer.headers,
        json={"product": {"name": "Chino", "colour": "khaki"}},
    )
    detail = refused(response)
    assert "`product`" in detail
    assert "an object with `sku` (optional), `name`, `brand` (optional), `category` (optional)" in (
        detail
    )


async def test_a_wrong_status_names_the_statuses(client, new_customer):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/preferences",
        headers=customer.headers,
        json={**CHINOS, "status": "gone"},
    )
    assert "one of `available`, `discontinued`" in refused(response)


async def test_a_missing_body_says_what_to_send(client, new_customer):
    customer = await new_customer()
    response = await client.post("/v1/me/preferences", headers=customer.headers)
    detail = refused(response)
    assert "Send a JSON object; allowed: an object with `product`" in detail


async def test_an_unknown_member_of_the_body_lists_the_members_there_are(client, new_customer):
    customer = await new_customer()
    response = await client.post(
        "/v1/me/checkout-codes", headers=customer.headers, json={"fields": ["product"], "ttl": 60}
    )
    detail = refused(response)
    assert "unknown field `ttl`" in detail
    assert "`ttl_seconds` (optional)" in detail


async def test_a_page_size_out_of_range_names_the_range(client, new_customer):
    customer = await new_customer()
    response = await client.get("/v1/me/access-log?limit=500", headers=customer.headers)
    detail = refused(response)
    assert "`limit`" in detail
    assert "a whole number from 1 to 200" in detail
