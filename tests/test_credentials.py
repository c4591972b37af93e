"""Till keys: made by the operator, shown once, stored as a hash, refused once revoked, and good
for the till endpoint only."""

from __future__ import annotations

import hashlib
import re
import uuid

import pytest

from prefs import credentials
from prefs.errors import InvalidInput
from tests.support.customer import CHINOS, bearer, grant
from tests.support.operator import prefs_command
from tests.support.stores import in_directory
from tests.support.till import look_up, shopper, till_key


def assert_refused(response, *statuses: int) -> None:
    assert response.status_code in statuses, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_operator_creates_lists_and_revokes_a_till_key(
    client, conn, new_customer, database, settings
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    name = f"Till 3 {uuid.uuid4().hex[:6]}"
    await in_directory(conn, "0421")

    code, created = await prefs_command(
        database,
        settings,
        "credentials",
        "create",
        "--kind",
        "pos",
        "--store",
        "0421",
        "--name",
        name,
    )

    assert code == 0, created
    [key] = re.findall(r"\bpos_[A-Za-z0-9_-]{40,}", created)
    [credential_id] = re.findall(r"^id:\s+([0-9a-f-]{36})$", created, re.MULTILINE)
    assert "only this once" in created
    assert (await look_up(client, key, card=card)).status_code == 200

    code, listed = await prefs_command(database, settings, "credentials", "list")
    assert code == 0, listed
    [line] = [line for line in listed.splitlines() if credential_id in line]
    assert " pos " in line
    assert "active" in line
    assert name in line
    assert "store 0421" in line
    assert key not in listed
    assert key[4:12] not in listed

    code, revoked = await prefs_command(database, settings, "credentials", "revoke", credential_id)
    assert code == 0, revoked
    assert credential_id in revoked
    assert key not in revoked

    refused = await look_up(client, key, card=card)
    assert_refused(refused, 401)
    code, listed = await prefs_command(database, settings, "credentials", "list")
    [line] = [line for line in listed.splitlines() if credential_id in line]
    assert "revoked" in line


async def test_the_operator_is_told_when_a_till_key_has_no_store_or_the_id_is_unknown(
    database, settings
):
    code, output = await prefs_command(
        database, settings, "credentials", "create", "--kind", "pos", "--name", "Till 3"
    )
    assert code != 0
    assert "store" in output

    code, output = await prefs_command(
        database, settings, "credentials", "revoke", str(uuid.uuid4())
    )
    assert code != 0
    assert "No such credential" in output


async def test_an_api_key_is_stored_only_as_its_hash(conn):
    cred, key = await till_key(conn)

    row = await conn.fetchrow("SELECT * FROM credentials WHERE credential_id = $1", cred.id)
    table = await conn.fetchval("SELECT string_agg(row_to_json(c)::text, '') FROM credentials c")

    assert row["key_hash"] == hashlib.sha256(key.encode()).digest()
    assert key not in table
    assert key.encode() not in b"".join(
        v if isinstance(v, bytes) else str(v).encode() for v in row.values()
    )


async def test_a_revoked_till_key_is_refused_on_its_very_next_request(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    cred, key = await till_key(conn)
    assert (await look_up(client, key, card=card)).status_code == 200

    await credentials.revoke(conn, cred.id)

    refused = await look_up(client, key, card=card)
    assert_refused(refused, 401)
    assert refused.headers["www-authenticate"].lower().startswith("bearer")
    assert "Classic Chino" not in refused.text
    again = await credentials.revoke(conn, cred.id)  # revoking twice keeps the first time
    assert again.revoked_at is not None


async def test_a_made_up_till_key_is_refused(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    _, key = await till_key(conn)

    for forged in ("pos_" + "A" * 43, key[:-1] + ("A" if key[-1] != "A" else "B"), key + "x"):
        assert_refused(await look_up(client, forged, card=card), 401)
    assert_refused(await client.post("/v1/pos/lookup", json={"card": card}), 401)
    assert_refused(
        await client.post("/v1/pos/lookup", headers={"Authorization": key}, json={"card": card}),
        401,
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/me"),
        ("POST", "/v1/me"),
        ("GET", "/v1/me/preferences"),
        ("POST", "/v1/me/preferences"),
        ("GET", "/v1/me/consents"),
        ("PUT", "/v1/me/consents/pos"),
        ("GET", "/v1/me/access-log"),
        ("POST", "/v1/me/checkout-codes"),
        ("GET", "/v1/partner/reorders"),
        ("GET", "/v1/insights/discontinued-demand"),
    ],
)
async def test_a_till_key_cannot_call_customer_or_partner_endpoints(client, conn, method, path):
    _, key = await till_key(conn)
    body = CHINOS if path.endswith("preferences") else {"fields": ["product"]}

    response = await client.request(
        method, path, headers=bearer(key), json=body if method in ("POST", "PUT") else None
    )

    assert_refused(response, 401, 403)


async def test_a_customer_token_cannot_call_the_till_endpoint(client, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)

    response = await client.post("/v1/pos/lookup", headers=customer.headers, json={"card": card})

    assert_refused(response, 401, 403)
    assert "Classic Chino" not in response.text


@pytest.mark.parametrize("kind", ["partner", "insights"])
async def test_partner_and_insights_keys_cannot_call_the_till_endpoint(
    client, conn, new_customer, kind
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    _, key = await credentials.create(conn, kind, f"Other {kind}")

    response = await look_up(client, key, card=card)

    assert_refused(response, 401, 403)
    assert "Classic Chino" not in response.text


@pytest.mark.parametrize(
    ("kind", "store"), [("pos", None), ("partner", "0421"), ("insights", "0421")]
)
async def test_only_a_till_key_belongs_to_a_store(conn, kind, store):
    with pytest.raises(InvalidInput):
        await credentials.create(conn, kind, "Somewhere", store=store)


async def test_every_key_is_new_and_carries_its_kind(conn):
    await in_directory(conn, "0421")
    keys = [
        (await credentials.create(conn, kind, "Key", store="0421" if kind == "pos" else None))[1]
        for kind in ("pos", "pos", "partner", "insights")
    ]

    assert [k[:4] for k in keys] == ["pos_", "pos_", "ptn_", "ins_"]
    assert len(set(keys)) == 4
    assert all(len(k) >= 40 for k in keys)


async def test_a_revoked_key_is_listed_with_when_it_was_revoked(conn):
    cred, key = await till_key(conn)
    assert await credentials.verify(conn, "pos", key) == cred
    await credentials.revoke(conn, cred.id)

    [listed] = [c for c in await credentials.list_all(conn) if c.id == cred.id]

    assert listed.revoked_at is not None
    assert await credentials.verify(conn, "pos", key) is None


@pytest.mark.parametrize(
    ("kind", "told"),
    [
        ("pos", "store it in the till's settings"),
        ("partner", "give it to the partner"),
        ("insights", "store it in the reporting tool that reads the demand statistics"),
    ],
)
async def test_each_kind_of_key_says_where_it_goes(database, settings, conn, kind, told):
    extra = ["--store", await in_directory(conn)] if kind == "pos" else []
    code, created = await prefs_command(
        database,
        settings,
        "credentials",
        "create",
        "--kind",
        kind,
        "--name",
        f"A {kind} key {uuid.uuid4().hex[:6]}",
        *extra,
    )
    assert code == 0, created
    assert told in created
    if kind == "insights":
        assert "till" not in created and "partner" not in created
