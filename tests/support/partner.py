"""The partner's steps (and the insights key's), with the customer's reorders they answer.

The database is shared by the whole session: every test makes its own customers and its own
partner and insights keys, so a partner's feed holds only that test's reorders.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx

from prefs import credentials, partner_refs
from tests.support.customer import bearer
from tests.support.stores import FROM_HIGH_STREET

PROBLEM_JSON = "application/problem+json"


async def partner_key(
    conn: asyncpg.Connection, name: str | None = None
) -> tuple[credentials.Credential, str]:
    """A new partner (named uniquely unless given) and its ptn_ key."""
    return await credentials.create(
        conn,
        "partner",
        name or f"Tailor {uuid.uuid4().hex[:8]}",
        description="Made-to-order trousers",
    )


async def insights_key(conn: asyncpg.Connection) -> tuple[credentials.Credential, str]:
    return await credentials.create(conn, "insights", f"Merch {uuid.uuid4().hex[:8]}")


async def reference(client: httpx.AsyncClient, customer: Any, partner_id: uuid.UUID) -> str:
    """The pairwise reference the customer's consent list shows for a partner."""
    response = await client.get("/v1/me/consents", headers=customer.headers)
    assert response.status_code == 200, response.text
    [consent] = [c for c in response.json()["items"] if c["audience"] == f"partner:{partner_id}"]
    ref: str = consent["reference"]
    return ref


async def reorder(
    client: httpx.AsyncClient,
    customer: Any,
    preference_id: str,
    fulfiller: str = FROM_HIGH_STREET,
    quantity: int = 1,
    key: str | None = None,
) -> httpx.Response:
    """POST a customer reorder with a fresh Idempotency-Key (unless given)."""
    headers = {**customer.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    return await client.post(
        f"/v1/me/preferences/{preference_id}/reorders",
        headers=headers,
        json={"quantity": quantity, "fulfiller": fulfiller},
    )


async def known_as(
    conn: asyncpg.Connection, partner_id: uuid.UUID | None, customer: Any, preference_id: str
) -> str:
    """The id the partner knows the customer's preference by (the one its first read shows)."""
    assert partner_id is not None
    customer_id, own = uuid.UUID(customer.id), uuid.UUID(preference_id)
    refs = await partner_refs.refs_for(conn, customer_id, partner_id, [own])
    return str(refs[own])


async def partner_reorder(
    client: httpx.AsyncClient,
    api_key: str,
    ref: str,
    preference_id: str,
    quantity: int = 1,
    key: str | None = None,
) -> httpx.Response:
    headers = {**bearer(api_key), "Idempotency-Key": key or str(uuid.uuid4())}
    return await client.post(
        "/v1/partner/reorders",
        headers=headers,
        json={"customer": ref, "preference": preference_id, "quantity": quantity},
    )


async def set_status(
    client: httpx.AsyncClient, api_key: str, reorder_id: str, state: str
) -> httpx.Response:
    return await client.post(
        f"/v1/partner/reorders/{reorder_id}/status", headers=bearer(api_key), json={"state": state}
    )


async def feed_page(
    client: httpx.AsyncClient, api_key: str, after: str | None = None, limit: int = 50
) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    response = await client.get("/v1/partner/reorders", headers=bearer(api_key), params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def pull(
    client: httpx.AsyncClient,
    api_key: str,
    after: str | None = None,
    *,
    want: int = 1,
    patience: float = 30,
) -> tuple[list[dict[str, Any]], str | None]:
    """Poll the feed from ``after`` until at least ``want`` reorders arrived (or time runs out).

    A reorder shows once every transaction older than its own has ended, so a busy shared
    server may hold it back for a moment.
    """
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + patience
    while True:
        page = await feed_page(client, api_key, after)
        items.extend(page["items"])
        after = page["next"]
        if len(items) >= want or time.monotonic() > deadline:
            return items, after
        if not page["items"]:
            await asyncio.sleep(0.05)


async def my_reorders(client: httpx.AsyncClient, customer: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/me/reorders", headers=customer.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def access_log(client: httpx.AsyncClient, customer: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/me/access-log", headers=customer.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items
