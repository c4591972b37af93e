"""The till's steps: fresh stores, cards and keys, a customer's preferences, lookups.

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
from tests.support.customer import CHINOS, bearer, keep_all
from tests.support.stores import in_directory

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


def fresh_card() -> str:
    """A random 16-digit card, written the way it is printed: four groups of four."""
    digits = f"{secrets.randbelow(10**15) + 10**15}"
    return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


async def till_key(
    conn: asyncpg.Connection, store: str | None = None, name: str = "Till 3"
) -> tuple[credentials.Credential, str]:
    """A new till key for ``store`` (a fresh store of the directory unless given)."""
    return await credentials.create(conn, "pos", name, store=await in_directory(conn, store))


async def look_up(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post("/v1/pos/lookup", headers=bearer(key), json=body)


async def shopper(
    new_customer: Any, client: httpx.AsyncClient
) -> tuple[Any, str, list[dict[str, Any]]]:
    """A customer with a card and three preferences (chinos, shirt, boots), nothing granted yet."""
    card = fresh_card()
    customer = await new_customer(card=card)
    kept = await keep_all(client, customer, CHINOS, SHIRT, BOOTS)
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


async def confirm_card(client: httpx.AsyncClient, till: str, customer: Any, card: str) -> None:
    """The customer shows a checkout code while ``till`` scans the card; the code is then ended."""
    code = await client.post(
        "/v1/me/checkout-codes", headers=customer.headers, json={"fields": ["product"]}
    )
    assert code.status_code == 201, code.text
    confirmed = await client.post(
        "/v1/pos/cards/confirm",
        headers=bearer(till),
        json={"card": card, "code": code.json()["code"]},
    )
    assert confirmed.status_code == 204, confirmed.text
    ended = await client.delete(
        f"/v1/me/checkout-codes/{code.json()['id']}", headers=customer.headers
    )
    assert ended.status_code == 204, ended.text
