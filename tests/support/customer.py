"""The customer's steps: tokens, preferences, consents, checkout codes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

ALL_FIELDS = ["product", "attributes", "note"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class CustomerSession:
    subject: str
    headers: dict[str, str]
    id: str


CHINOS: dict[str, Any] = {
    "product": {
        "sku": "CL-CHINO-3434",
        "name": "Classic Chino",
        "brand": "Acme",
        "category": "trousers",
    },
    "attributes": {"waist": "34", "leg": "34", "colour": "khaki", "fit": "regular"},
    "note": "The old cut, before they changed the pockets.",
    "status": "discontinued",
}


async def keep(
    client: httpx.AsyncClient, customer: Any, body: dict[str, Any] = CHINOS
) -> dict[str, Any]:
    """Save one preference for ``customer``; returns it as the API answered."""
    response = await client.post("/v1/me/preferences", headers=customer.headers, json=body)
    assert response.status_code == 201, response.text
    preference: dict[str, Any] = response.json()
    return preference


async def keep_all(
    client: httpx.AsyncClient, customer: Any, *bodies: dict[str, Any]
) -> list[dict[str, Any]]:
    """Save preferences for ``customer`` in order; returns them as the API answered."""
    return [await keep(client, customer, body) for body in bodies]


async def preferences_of(client: httpx.AsyncClient, customer: Any) -> list[dict[str, Any]]:
    """The customer's own view of their preferences, in rank order."""
    response = await client.get("/v1/me/preferences", headers=customer.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def grant(
    client: httpx.AsyncClient,
    customer: Any,
    audience: str = "pos",
    fields: list[str] | None = None,
    **body: Any,
) -> dict[str, Any]:
    """PUT a consent (default: every field of every preference) and return the answer."""
    body["fields"] = ALL_FIELDS if fields is None else fields
    response = await client.put(f"/v1/me/consents/{audience}", headers=customer.headers, json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def withdraw(
    client: httpx.AsyncClient, customer: Any, audience: str = "pos"
) -> dict[str, Any]:
    response = await client.delete(f"/v1/me/consents/{audience}", headers=customer.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def checkout_code(client: httpx.AsyncClient, customer: Any, **body: Any) -> dict[str, Any]:
    body.setdefault("fields", ALL_FIELDS)
    response = await client.post("/v1/me/checkout-codes", headers=customer.headers, json=body)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer
