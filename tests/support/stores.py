"""Stores in the directory, and a store's tills working its queue of reorders."""

from __future__ import annotations

import secrets
from typing import Any

import asyncpg
import httpx

from prefs.errors import Conflict
from prefs.stores import service as stores
from tests.support.customer import bearer

# The session's store: customers reorder from it when a test names no other (tests/conftest.py
# adds it to the directory).
HIGH_STREET = "high-street"
FROM_HIGH_STREET = f"store:{HIGH_STREET}"


def fresh_store() -> str:
    return f"S{secrets.token_hex(4)}"


async def in_directory(
    conn: asyncpg.Connection, store_id: str | None = None, name: str | None = None
) -> str:
    """A store of the directory (a fresh one unless given; kept as it is if already there)."""
    store_id = store_id or fresh_store()
    try:
        await stores.add(conn, stores.entry(store_id, name or f"Store {store_id}"))
    except Conflict:
        pass
    return store_id


async def queue(
    client: httpx.AsyncClient, key: str, after: str | None = None, limit: int = 50
) -> httpx.Response:
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    return await client.get("/v1/pos/reorders", headers=bearer(key), params=params)


async def drain(
    client: httpx.AsyncClient, key: str, after: str | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Every change in the store's queue after ``after``, and the cursor to go on with."""
    seen: list[dict[str, Any]] = []
    while True:
        response = await queue(client, key, after, limit=100)
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        if not page["items"]:
            return seen, page["next"]
        after = page["next"]


async def move(client: httpx.AsyncClient, key: str, reorder_id: str, state: str) -> httpx.Response:
    return await client.post(
        f"/v1/pos/reorders/{reorder_id}/status", headers=bearer(key), json={"state": state}
    )
