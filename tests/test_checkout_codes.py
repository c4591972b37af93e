"""Checkout codes end when the customer says so: on the page, or by no longer sharing with
tills; and a code works only at the first store that used it."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx

from prefs.crypto import api_key_hash
from tests.support.customer import CHINOS, checkout_code, grant, keep_all, withdraw
from tests.support.scanner import Scanned, drawn, quiet_zone, scan
from tests.support.till import look_up, shopper, till_key


async def test_a_customer_can_end_a_code_early(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer()
    await keep_all(client, customer, CHINOS)
    code = await checkout_code(client, customer)
    _, till = await till_key(conn)

    ended = await client.delete(f"/v1/me/checkout-codes/{code['id']}", headers=customer.headers)

    assert ended.status_code == 204, ended.text
    assert (await look_up(client, till, code=code["code"])).status_code == 404
    again = await client.delete(f"/v1/me/checkout-codes/{code['id']}", headers=customer.headers)
    assert again.status_code == 404


async def test_nobody_else_can_end_a_customers_code(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer, other = await new_customer(), await new_customer()
    await keep_all(client, customer, CHINOS)
    code = await checkout_code(client, customer)
    _, till = await till_key(conn)

    refused = await client.delete(f"/v1/me/checkout-codes/{code['id']}", headers=other.headers)

    assert refused.status_code == 404
    assert (await look_up(client, till, code=code["code"])).status_code == 200


async def test_no_longer_sharing_with_tills_ends_live_codes(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer, _, _ = await shopper(new_customer, client)
    await grant(client, customer)
    code = await checkout_code(client, customer)
    _, till = await till_key(conn)

    await withdraw(client, customer)

    assert (await look_up(client, till, code=code["code"])).status_code == 404


async def test_a_code_works_only_at_the_first_store_that_used_it(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer()
    await keep_all(client, customer, CHINOS)
    code = (await checkout_code(client, customer))["code"]
    _, first = await till_key(conn)
    _, elsewhere = await till_key(conn)
    _, same_store_other_till = await till_key(conn, store=(await store_of(conn, first)))

    assert (await look_up(client, first, code=code)).status_code == 200
    refused = await look_up(client, elsewhere, code=code)
    assert refused.status_code == 404
    assert (await look_up(client, same_store_other_till, code=code)).status_code == 200
    assert (await look_up(client, first, code=code)).status_code == 200


async def store_of(conn: asyncpg.Connection, key: str) -> str:
    store: str = await conn.fetchval(
        "SELECT store FROM credentials WHERE key_hash = $1", api_key_hash(key)
    )
    return store


async def test_the_qr_code_of_a_checkout_code_reads_as_the_code_at_the_till(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    customer = await new_customer()
    await keep_all(client, customer, CHINOS)
    made = await checkout_code(client, customer)
    _, till = await till_key(conn)

    png = drawn(made["qr_svg"])

    scanned = scan(png)
    assert scanned == [Scanned(made["code"], "QRCode", 1)]
    assert quiet_zone(png, modules=21) == 4
    grouped = f"{made['code'][:4]} {made['code'][4:]}"
    assert f"<title>QR code of the checkout code {grouped}</title>" in made["qr_svg"]
    assert (await look_up(client, till, code=scanned[0].text)).status_code == 200
