"""Shared steps for the till tests: fresh stores, cards and keys, a customer's preferences, lookups.

The database is shared by the whole session, so every test makes its own customers, cards, stores
and keys (the lookup throttle counts misses per key and per store).
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg
import httpx

from prefs import credentials
from prefs.access_log.service import opened
from prefs.crypto import Vault
from prefs.customer_keys import data_key
from tests.conftest import CHINOS, bearer

SHIRT: dict[str, Any] = {
    "product": {
        "sku": "OX-SHIRT-42",
        "name": "Oxford Shirt",
        "brand": "Acme",
        "category": "shirts",
    },
    "attributes": {"collar": "42", "sleeve": "long", "colour": "blue"},
    "status": "available",
}
BOOTS: dict[str, Any] = {
    "product": {"sku": "DB-BOOT-11", "name": "Desert Boot", "brand": "Clarks", "category": "shoes"},
    "attributes": {"size": "11", "width": "wide"},
    "note": "Half a size up in winter, for thick socks.",
    "status": "available",
}
NOT_FOUND_DETAIL = "No customer preferences can be shown for this card or code."


def fresh_store() -> str:
    return f"S{secrets.token_hex(4)}"


def fresh_card() -> str:
    """A random 16-digit card, written the way it is printed: four groups of four."""
    digits = f"{secrets.randbelow(10**15) + 10**15}"
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


async def till_key(
    conn: asyncpg.Connection, store: str | None = None, name: str = "Till 3"
) -> tuple[credentials.Credential, str]:
    """A new till key for ``store`` (a fresh store unless given)."""
    return await credentials.create(conn, "pos", name, store=store or fresh_store())


async def look_up(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post("/v1/pos/lookup", headers=bearer(key), json=body)


async def keep(
    client: httpx.AsyncClient, customer: Any, *bodies: dict[str, Any]
) -> list[dict[str, Any]]:
    """Save preferences for ``customer``; returns them as the API answered."""
    kept = []
    for body in bodies:
        response = await client.post("/v1/me/preferences", headers=customer.headers, json=body)
        assert response.status_code == 201, response.text
        kept.append(response.json())
    return kept


async def preferences_of(client: httpx.AsyncClient, customer: Any) -> list[dict[str, Any]]:
    """The customer's own view of their preferences, in rank order."""
    response = await client.get("/v1/me/preferences", headers=customer.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def grant(
    client: httpx.AsyncClient, customer: Any, audience: str = "pos", **body: Any
) -> dict[str, Any]:
    """PUT a consent (default: every field of every preference) and return the answer."""
    body.setdefault("fields", ["product", "attributes", "note"])
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
    body.setdefault("fields", ["product", "attributes", "note"])
    response = await client.post("/v1/me/checkout-codes", headers=customer.headers, json=body)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def shopper(
    new_customer: Any, client: httpx.AsyncClient
) -> tuple[Any, str, list[dict[str, Any]]]:
    """A customer with a card and three preferences (chinos, shirt, boots), nothing granted yet."""
    card = fresh_card()
    customer = await new_customer(card=card)
    kept = await keep(client, customer, CHINOS, SHIRT, BOOTS)
    return customer, card, kept


async def disclosures(conn: asyncpg.Connection, customer_id: str | uuid.UUID) -> int:
    """How many access-log records the customer has."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM access_log WHERE customer_id = $1", uuid.UUID(str(customer_id))
    )
    return count


async def visits(
    conn: asyncpg.Connection, vault: Vault, customer_id: str | uuid.UUID
) -> list[dict[str, Any]]:
    """The customer's access-log records, unsealed with their data key (column name → value)."""
    customer = uuid.UUID(str(customer_id))
    rows = await conn.fetch("SELECT * FROM access_log WHERE customer_id = $1", customer)
    return opened(await data_key(conn, vault, customer), rows)
