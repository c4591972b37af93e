"""The export: everything held about a customer, decrypted, in one JSON document; only theirs."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx

from prefs.auth import DevIssuer
from tests.support.customer import bearer, grant, keep, withdraw
from tests.support.partner import known_as
from tests.support.rights import (
    Shopper,
    enrol,
    fresh_card,
    items,
    look_up,
    partner,
    partner_feed,
    preference,
    reference,
    reorder,
    till,
    typed_strings,
)


async def busy_customer(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, label: str
) -> dict[str, Any]:
    """A customer who has used every part of the service; returns what the API answered."""
    till_credential, till_key = await till(conn)
    tailor, tailor_key = await partner(conn)
    audience = f"partner:{tailor.partner_id}"
    card = fresh_card()
    shopper = await enrol(client, issuer, card=card, till=till_key)
    bodies = [preference(f"{label}-1"), preference(f"{label}-2", status="available")]
    kept = [await keep(client, shopper, body) for body in bodies]

    receipts = [(await grant(client, shopper, "pos"))["receipt"]["receipt_id"]]
    receipts.append(
        (await grant(client, shopper, audience, ["product", "attributes"]))["receipt"]["receipt_id"]
    )
    receipts.append((await withdraw(client, shopper, "pos"))["receipt"]["receipt_id"])
    receipts.append(
        (await grant(client, shopper, "pos", ["product", "attributes", "note"]))["receipt"][
            "receipt_id"
        ]
    )

    response = await client.post(
        "/v1/me/checkout-codes",
        headers=shopper.headers,
        json={"fields": ["product"], "preferences": [kept[0]["id"]]},
    )
    assert response.status_code == 201, response.text
    code = response.json()

    from_store = await reorder(client, shopper, kept[1]["id"])
    cancelled = await reorder(client, shopper, kept[1]["id"])
    response = await client.post(
        f"/v1/me/reorders/{cancelled['id']}/cancel", headers=shopper.headers
    )
    assert response.status_code == 200, response.text
    from_tailor = await reorder(client, shopper, kept[0]["id"], fulfiller=audience)
    ref = await reference(client, shopper, tailor.partner_id)
    known = await known_as(conn, tailor.partner_id, shopper, kept[0]["id"])
    response = await client.post(
        "/v1/partner/reorders",
        headers={**bearer(tailor_key), "Idempotency-Key": str(uuid.uuid4())},
        json={"customer": ref, "preference": known, "quantity": 2},
    )
    assert response.status_code == 201, response.text
    by_tailor = response.json()
    await partner_feed(client, tailor_key, want=2)
    response = await client.post(
        f"/v1/partner/reorders/{from_tailor['id']}/status",
        headers=bearer(tailor_key),
        json={"state": "accepted"},
    )
    assert response.status_code == 200, response.text

    for body in ({"card": card}, {"code": code["code"]}):
        assert (await look_up(client, till_key, **body)).status_code == 200

    return {
        "shopper": shopper,
        "card": card,
        "bodies": bodies,
        "kept": kept,
        "receipts": receipts,
        "code": code,
        "ref": ref,
        "tailor": tailor,
        "till": till_credential,
        "reorders": {
            from_store["id"]: "requested",
            cancelled["id"]: "cancelled",
            from_tailor["id"]: "accepted",
            by_tailor["id"]: "proposed",
        },
    }


async def export_of(client: httpx.AsyncClient, shopper: Shopper) -> bytes:
    response = await client.get("/v1/me/export", headers=shopper.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.content


async def test_export_holds_everything_the_customer_created(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> None:
    mine = await busy_customer(client, conn, issuer, "mine")
    shopper = mine["shopper"]

    document = json.loads(await export_of(client, shopper))

    assert document["schema_version"] == 2
    assert document["profile"]["id"] == shopper.id
    assert document["profile"]["card"] == mine["card"]

    assert document["preferences"] == await items(client, shopper, "/v1/me/preferences")
    by_id = {p["id"]: p for p in document["preferences"]}
    assert set(by_id) == {p["id"] for p in mine["kept"]}
    for kept, body in zip(mine["kept"], mine["bodies"], strict=True):
        exported = by_id[kept["id"]]
        assert (exported["product"], exported["attributes"], exported["note"]) == (
            body["product"],
            body["attributes"],
            body["note"],
        )

    tailor_audience = f"partner:{mine['tailor'].partner_id}"
    consents = {c["audience"]: c for c in document["consents"]}
    assert set(consents) == {"pos", tailor_audience}
    # recipients as a person reads them, exactly as the consents page shows them
    assert document["consents"] == await items(client, shopper, "/v1/me/consents")
    assert consents[tailor_audience]["recipient"] == mine["tailor"].name
    assert consents["pos"]["recipient"] == "Store tills at checkout"
    assert consents[tailor_audience]["fields"] == ["product", "attributes"]
    assert consents["pos"]["receipt_id"] == mine["receipts"][-1]
    assert document["partner_references"] == [
        {
            "partner_id": str(mine["tailor"].partner_id),
            "name": mine["tailor"].name,
            "ref": mine["ref"],
        }
    ]

    ledger = document["consent_ledger"]
    assert [entry["seq"] for entry in ledger] == [1, 2, 3, 4]
    assert [entry["receipt"]["receipt_id"] for entry in ledger] == mine["receipts"]
    assert [entry["receipt"]["state"] for entry in ledger] == [
        "ConsentGiven",
        "ConsentGiven",
        "ConsentWithdrawn",
        "ConsentGiven",
    ]
    assert all(entry["receipt"]["principal"] == shopper.id for entry in ledger)
    assert [entry["prev_hash"] for entry in ledger[1:]] == [entry["hash"] for entry in ledger[:-1]]

    [code] = document["checkout_codes_in_force"]
    assert datetime.fromisoformat(code["expires_at"]) == datetime.fromisoformat(
        mine["code"]["expires_at"]
    )
    assert (code["fields"], code["preferences"]) == (["product"], [mine["kept"][0]["id"]])
    assert code["keep_purchases"] is False
    assert mine["code"]["code"] not in json.dumps(document)  # only its keyed hash is kept

    assert {r["id"]: r["state"] for r in document["reorders"]} == mine["reorders"]
    own_view = {r["id"]: r for r in await items(client, shopper, "/v1/me/reorders")}
    assert {r["id"]: r for r in document["reorders"]} == own_view
    assert all(r["item"]["product"] for r in document["reorders"])

    log = await items(client, shopper, "/v1/me/access-log")
    # the same entries as the access-log page, names and summaries included (oldest first)
    assert document["access_log"] == list(reversed(log))
    names = {p["product"]["name"] for p in mine["kept"]}
    assert all(p["name"] in names for d in document["access_log"] for p in d["preferences"])
    assert any(mine["kept"][0]["product"]["name"] in d["summary"] for d in document["access_log"])
    till_entries = [d for d in document["access_log"] if d["who"]["kind"] == "pos"]
    assert sorted(d["via"] for d in till_entries) == ["card", "code"]
    assert {d["who"]["id"] for d in till_entries} == {str(mine["till"].id)}
    assert {d["who"]["kind"] for d in document["access_log"]} == {"pos", "partner"}


async def test_export_holds_nothing_of_another_customer(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> None:
    mine = await busy_customer(client, conn, issuer, "mine")
    theirs = await busy_customer(client, conn, issuer, "theirs")

    exported = (await export_of(client, mine["shopper"])).decode()

    for body in mine["bodies"]:
        assert all(text in exported for text in typed_strings(body))
    their_traces = [
        theirs["shopper"].id,
        theirs["shopper"].subject,
        theirs["card"],
        theirs["ref"],
        *theirs["receipts"],
        *theirs["reorders"],
        *(p["id"] for p in theirs["kept"]),
    ]
    for body in theirs["bodies"]:
        their_traces.extend(typed_strings(body))
    assert [trace for trace in their_traces if trace in exported] == []


async def test_export_parses_as_json_and_is_stable_for_the_same_data(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> None:
    mine = await busy_customer(client, conn, issuer, "stable")

    first = await export_of(client, mine["shopper"])
    second = await export_of(client, mine["shopper"])

    assert first == second
    document = json.loads(
        first, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name))
    )
    assert json.loads(json.dumps(document)) == document
    assert document["schema_version"] == 2


async def test_export_of_a_new_customer_is_complete_and_empty(
    client: httpx.AsyncClient, issuer: DevIssuer
) -> None:
    shopper = await enrol(client, issuer)

    document = json.loads(await export_of(client, shopper))

    assert document["profile"]["id"] == shopper.id
    assert document["profile"]["card"] is None
    for section in (
        "preferences",
        "consents",
        "partner_references",
        "consent_ledger",
        "checkout_codes_in_force",
        "reorders",
        "access_log",
    ):
        assert document[section] == [], section


async def test_export_needs_the_customer_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/me/export")

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
