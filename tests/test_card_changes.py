"""The loyalty card: one claim per customer, however many changes race each other."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import httpx

from prefs.crypto import Vault
from prefs.customers.service import CARD_CHANGES_PER_HOUR
from tests.support.customer import CHINOS, grant, keep_all
from tests.support.till import confirm_card, fresh_card, look_up, till_key

ROUNDS = 4
RACING = CARD_CHANGES_PER_HOUR


async def claimed_cards(conn: asyncpg.Connection, customer_id: str) -> set[tuple[bytes, int]]:
    rows = await conn.fetch(
        "SELECT card_hash, index_version FROM card_claims WHERE customer_id = $1",
        uuid.UUID(customer_id),
    )
    return {(row["card_hash"], row["index_version"]) for row in rows}


async def test_concurrent_card_changes_leave_one_card_the_last_one_acknowledged(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any, vault: Vault
) -> None:
    customer = await new_customer(card=fresh_card())
    await keep_all(client, customer, CHINOS)
    await grant(client, customer)
    _, till = await till_key(conn)

    async def change(card: str) -> tuple[float, str]:
        response = await client.patch("/v1/me", headers=customer.headers, json={"card": card})
        acknowledged = time.monotonic()
        assert response.status_code == 200, response.text
        assert response.json()["card"] == card.replace(" ", "")
        return acknowledged, card

    for _ in range(ROUNDS):
        # each round starts a fresh window of card changes (they are limited per hour)
        await conn.execute(
            "UPDATE customers SET card_changes = 0 WHERE customer_id = $1", uuid.UUID(customer.id)
        )
        racing = [fresh_card() for _ in range(RACING)]
        answers = await asyncio.gather(*(change(card) for card in racing))
        _, last = max(answers)
        digits = last.replace(" ", "")

        assert await claimed_cards(conn, customer.id) == {
            (vault.index.card(digits, version), version) for version in vault.index.versions
        }
        me = await client.get("/v1/me", headers=customer.headers)
        assert me.json()["card"] == digits
        await confirm_card(client, till, customer, last)
        assert (await look_up(client, till, card=last)).status_code == 200
        earlier = next(card for card in racing if card != last)
        assert (await look_up(client, till, card=earlier)).status_code == 404
