"""Erasure by crypto-shredding: DELETE /v1/me destroys the data key with the rows, so copies of the
customer's ciphertexts elsewhere can no longer be read, and a restored backup is erased again."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from prefs import db
from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.consents import service as consents
from prefs.consents.schemas import ConsentGrant
from prefs.crypto import DataKey, DecryptionError, Vault
from prefs.customer_keys import data_key
from prefs.errors import NotEnrolled
from prefs.rights import service as rights
from prefs.settings import DEV_ISSUER, Settings
from tests.support.customer import bearer, grant, keep
from tests.support.database import Database
from tests.support.rights import (
    OwnDatabase,
    Shopper,
    create_database,
    drop_database,
    enrol,
    fresh_card,
    items,
    look_up,
    own_database,
    partner,
    partner_feed,
    pg_dump,
    pg_tool,
    preference,
    reference,
    reorder,
    run_prefs,
    till,
    typed_strings,
)
from tests.support.servers import LiveServer

# Every table that holds rows about one customer, by its customer_id column.
CUSTOMER_TABLES = [
    "customers",
    "customer_keys",
    "customer_subjects",
    "card_index",
    "card_claims",
    "checkout_codes",
    "consents",
    "consent_ledger",
    "preferences",
    "partner_preference_refs",
    "reorders",
    "partner_refs",
    "idempotency_keys",
    "access_log",
]


async def victim(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> dict[str, Any]:
    """A customer with a card, preferences, every kind of grant, a checkout code, reorders (one a
    partner accepted, one still requested), stored idempotent answers and a till lookup logged."""
    _, till_key = await till(conn)
    tailor, tailor_key = await partner(conn)
    audience = f"partner:{tailor.partner_id}"
    card = fresh_card()
    shopper = await enrol(client, issuer, card=card, till=till_key)
    bodies = [preference("erase-1"), preference("erase-2")]
    kept = [await keep(client, shopper, body) for body in bodies]
    for target in ("pos", audience, "insights"):
        await grant(client, shopper, target)
    response = await client.post(
        "/v1/me/checkout-codes", headers=shopper.headers, json={"fields": ["product"]}
    )
    assert response.status_code == 201, response.text
    from_store = await reorder(client, shopper, kept[0]["id"])
    accepted = await reorder(client, shopper, kept[0]["id"], fulfiller=audience)
    requested = await reorder(client, shopper, kept[1]["id"], fulfiller=audience)
    await partner_feed(client, tailor_key, want=2)
    response = await client.post(
        f"/v1/partner/reorders/{accepted['id']}/status",
        headers=bearer(tailor_key),
        json={"state": "accepted"},
    )
    assert response.status_code == 200, response.text
    assert (await look_up(client, till_key, card=card)).status_code == 200
    ref = await reference(client, shopper, tailor.partner_id)
    markers = [shopper.subject, card, ref, *(s for body in bodies for s in typed_strings(body))]
    return {
        "shopper": shopper,
        "card": card,
        "kept": kept,
        "till_key": till_key,
        "tailor_key": tailor_key,
        "ref": ref,
        "accepted": accepted["id"],
        "requested": requested["id"],
        "from_store": from_store["id"],
        "markers": markers,
    }


async def erase(client: httpx.AsyncClient, shopper: Shopper) -> None:
    response = await client.delete("/v1/me", headers=shopper.headers)
    assert response.status_code == 204, response.text


async def copied_ciphertexts(
    conn: asyncpg.Connection, customer_id: uuid.UUID
) -> list[tuple[bytes, str, str, str]]:
    """The customer's ciphertexts as a replica or a copied table would hold them, with where they
    lived: (blob, table, column, row)."""
    copies: list[tuple[bytes, str, str, str]] = []
    for row in await conn.fetch(
        "SELECT preference_id, sealed FROM preferences WHERE customer_id = $1", customer_id
    ):
        copies.append((row["sealed"], "preferences", "sealed", str(row["preference_id"])))
    card_ct = await conn.fetchval(
        "SELECT card_ct FROM customers WHERE customer_id = $1", customer_id
    )
    copies.append((card_ct, "customers", "card", str(customer_id)))
    for row in await conn.fetch(
        "SELECT reorder_id, snapshot_ct FROM reorders WHERE customer_id = $1", customer_id
    ):
        copies.append((row["snapshot_ct"], "reorders", "snapshot", str(row["reorder_id"])))
    for row in await conn.fetch(
        "SELECT owner, key, response_ct FROM idempotency_keys WHERE customer_id = $1", customer_id
    ):
        copies.append(
            (row["response_ct"], "idempotency_keys", "response", f"{row['owner']}/{row['key']}")
        )
    for row in await conn.fetch(  # the visits: which till or partner saw what, when
        "SELECT disclosure_id, sealed FROM access_log WHERE customer_id = $1", customer_id
    ):
        copies.append((row["sealed"], "access_log", "sealed", str(row["disclosure_id"])))
    return copies


def readable(key: DataKey, copies: list[tuple[bytes, str, str, str]]) -> list[str]:
    opened = []
    for blob, table, column, row_id in copies:
        try:
            key.decrypt(blob, table, column, row_id)
        except DecryptionError:
            continue
        opened.append(f"{table}.{column}")
    return opened


async def test_copied_ciphertexts_cannot_be_read_after_erasure(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, vault: Vault
) -> None:
    mine = await victim(client, conn, issuer)
    customer_id = uuid.UUID(mine["shopper"].id)
    copies = await copied_ciphertexts(conn, customer_id)
    tables = {(table, column) for _, table, column, _ in copies}
    assert tables == {
        ("preferences", "sealed"),
        ("customers", "card"),
        ("reorders", "snapshot"),
        ("idempotency_keys", "response"),
        ("access_log", "sealed"),
    }
    assert len(readable(await data_key(conn, vault, customer_id), copies)) == len(copies)

    await erase(client, mine["shopper"])

    with pytest.raises(NotEnrolled):
        await data_key(conn, vault, customer_id)
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM customer_keys WHERE customer_id = $1", customer_id
        )
        == 0
    )
    # the same person enrolling again gets a new key, which reads none of the old copies
    again = await enrol(client, issuer, subject=mine["shopper"].subject)
    assert readable(await data_key(conn, vault, uuid.UUID(again.id)), copies) == []


async def test_every_row_about_an_erased_customer_is_gone(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, vault: Vault
) -> None:
    mine = await victim(client, conn, issuer)
    customer_id = uuid.UUID(mine["shopper"].id)
    pseudonyms = vault.index.all_digests("demand", customer_id.bytes)
    demand = "SELECT count(*) FROM demand_contributions WHERE pseudonym = ANY($1::bytea[])"
    assert await conn.fetchval(demand, pseudonyms) > 0

    await erase(client, mine["shopper"])

    left = {
        table: await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE customer_id = $1", customer_id
        )
        for table in CUSTOMER_TABLES
    }
    # what someone was working on stays, closed and unreadable: the partner's accepted reorder
    # and the store's (whose queue shows it cancelled)
    assert left == {table: 0 for table in CUSTOMER_TABLES} | {"reorders": 2}
    kept = await conn.fetch(
        "SELECT reorder_id, state, snapshot_ct FROM reorders WHERE customer_id = $1", customer_id
    )
    assert sorted((str(r["reorder_id"]), r["state"], r["snapshot_ct"]) for r in kept) == sorted(
        [(mine["accepted"], "cancelled", None), (mine["from_store"], "cancelled", None)]
    )
    assert await conn.fetchval(demand, pseudonyms) == 0
    response = await client.get("/v1/me", headers=mine["shopper"].headers)
    assert response.status_code == 404


async def demand_labels(conn: asyncpg.Connection, vault: Vault) -> list[str]:
    """Every discontinued-demand label held, decrypted with the service's keys."""
    return [
        vault.demand_labels.decrypt(row["label_ct"], row["group_hash"]).decode()
        for row in await conn.fetch("SELECT group_hash, label_ct FROM demand_groups")
    ]


async def test_demand_labels_only_an_erased_customer_contributed_go_with_the_erasure(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, vault: Vault
) -> None:
    mine = await victim(client, conn, issuer)
    shared, alone = (p["product"]["name"] for p in mine["kept"])
    someone_else = await enrol(client, issuer)
    wanted_too = mine["kept"][0]
    await keep(
        client,
        someone_else,
        {k: wanted_too[k] for k in ("product", "attributes", "note", "status")},
    )
    await grant(client, someone_else, "insights")
    labels = await demand_labels(conn, vault)
    assert any(shared in label for label in labels)
    assert any(alone in label for label in labels)

    await erase(client, mine["shopper"])

    labels = await demand_labels(conn, vault)
    assert [label for label in labels if alone in label] == []
    assert any(shared in label for label in labels)  # someone else still wants it


async def test_an_erasure_beside_a_new_contribution_to_the_same_group_keeps_the_group(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    database: Database,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
) -> None:
    leaving = await enrol(client, issuer)
    body = preference("together")
    await keep(client, leaving, body)
    await grant(client, leaving, "insights")
    joining = await enrol(client, issuer)
    await keep(client, joining, body)

    granting, erasing = await db.connect(database.url), await db.connect(database.url)
    try:
        opting_in = granting.transaction()
        await opting_in.start()
        await consents.grant(
            granting,
            vault,
            settings.controller,
            uuid.UUID(joining.id),
            "insights",
            ConsentGrant(fields=["product", "attributes"]),
        )
        erasure = asyncio.create_task(rights.erase(erasing, vault, uuid.UUID(leaving.id)))
        for _ in range(200):  # the erasure waits for the contribution being made
            waiting = await conn.fetchval(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1",
                erasing.get_server_pid(),
            )
            if waiting == "Lock" or erasure.done():
                break
            await asyncio.sleep(0.05)
        await opting_in.commit()
        assert await asyncio.wait_for(erasure, 30)
    finally:
        await granting.close()
        await erasing.close()

    labels = await demand_labels(conn, vault)
    assert len([label for label in labels if body["product"]["name"] in label]) == 1


async def test_till_gets_the_same_404_for_an_erased_card_as_for_an_unknown_one(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> None:
    mine = await victim(client, conn, issuer)

    await erase(client, mine["shopper"])

    erased = await look_up(client, mine["till_key"], card=mine["card"])
    unknown = await look_up(client, mine["till_key"], card=fresh_card())
    assert erased.status_code == unknown.status_code == 404
    assert erased.headers["content-type"] == unknown.headers["content-type"]
    assert erased.content == unknown.content


async def test_partner_sees_nothing_personal_of_an_erased_customer(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
) -> None:
    mine = await victim(client, conn, issuer)
    tailor = bearer(mine["tailor_key"])
    before = await partner_feed(client, mine["tailor_key"], want=2)
    assert {r["id"]: r["state"] for r in before} == {
        mine["accepted"]: "accepted",
        mine["requested"]: "requested",
    }
    assert all(r["item"] is not None for r in before)

    await erase(client, mine["shopper"])

    feed = await partner_feed(client, mine["tailor_key"], want=1)
    assert [(r["id"], r["state"], r["item"], r["customer"]) for r in feed] == [
        (mine["accepted"], "cancelled", None, "erased")
    ]
    response = await client.post(
        f"/v1/partner/reorders/{mine['accepted']}/status",
        headers=tailor,
        json={"state": "fulfilled"},
    )
    assert response.status_code == 409
    erased_ref = await client.get(
        f"/v1/partner/customers/{mine['ref']}/preferences", headers=tailor
    )
    unknown_ref = await client.get(
        f"/v1/partner/customers/{uuid.uuid4().hex}/preferences", headers=tailor
    )
    assert erased_ref.status_code == unknown_ref.status_code == 404
    assert erased_ref.content == unknown_ref.content
    response = await client.post(
        "/v1/partner/reorders",
        headers={**tailor, "Idempotency-Key": str(uuid.uuid4())},
        json={"customer": mine["ref"], "preference": mine["kept"][0]["id"], "quantity": 1},
    )
    assert response.status_code == 404
    seen = "".join(r.text for r in (erased_ref, response)) + str(feed)
    assert [m for m in mine["markers"] if m in seen] == []


def traces(dump: bytes, strings: list[str]) -> list[str]:
    """Which strings a dump holds, as text or as bytea hex."""
    return [s for s in strings if s.encode() in dump or s.encode().hex().encode() in dump]


async def test_database_dump_holds_no_trace_of_an_erased_customer(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    database: Database,
) -> None:
    mine = await victim(client, conn, issuer)
    card_hashes = [h.hex() for h in vault.index.all_digests("card", mine["card"].encode())]
    before = await _dump(database.url)
    assert traces(before, [mine["ref"], *card_hashes]) == [mine["ref"], *card_hashes]

    await erase(client, mine["shopper"])

    after = await _dump(database.url)
    assert traces(after, [*mine["markers"], *card_hashes]) == []


async def _dump(url: str) -> bytes:
    return await asyncio.to_thread(pg_dump, url)


async def test_the_same_person_can_enrol_again_and_starts_empty(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, vault: Vault
) -> None:
    mine = await victim(client, conn, issuer)
    await erase(client, mine["shopper"])

    response = await client.post("/v1/me", headers=mine["shopper"].headers)

    assert response.status_code == 201, response.text
    again = Shopper(
        subject=mine["shopper"].subject, headers=mine["shopper"].headers, id=response.json()["id"]
    )
    assert again.id != mine["shopper"].id
    profile = (await client.get("/v1/me", headers=again.headers)).json()
    assert (profile["card"], profile["preferences"]) == (None, 0)
    for path in (
        "/v1/me/preferences",
        "/v1/me/consents",
        "/v1/me/consents/history",
        "/v1/me/reorders",
        "/v1/me/access-log",
    ):
        assert await items(client, again, path) == [], path
    # the card's blind index went with the erasure: it can be registered again
    response = await client.patch("/v1/me", headers=again.headers, json={"card": mine["card"]})
    assert response.status_code == 200, response.text
    # replaying the erasure does not touch someone who enrolled after it
    await rights.replay_erasures(conn, vault)
    assert (await client.get("/v1/me", headers=again.headers)).json()["id"] == again.id


async def test_erasure_tombstone_holds_no_subject(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, vault: Vault
) -> None:
    mine = await victim(client, conn, issuer)
    subject = mine["shopper"].subject
    hashes = [vault.index.subject(DEV_ISSUER, subject, version) for version in vault.index.versions]

    await erase(client, mine["shopper"])

    rows = await conn.fetch("SELECT * FROM erasures WHERE subject_hash = ANY($1::bytea[])", hashes)
    assert len(rows) == 1
    [tombstone] = rows
    assert set(tombstone.keys()) == {"subject_hash", "index_version", "erased_at"}
    assert tombstone["subject_hash"] == vault.index.subject(
        DEV_ISSUER, subject, tombstone["index_version"]
    )
    stored = repr(dict(tombstone)).encode() + tombstone["subject_hash"]
    assert subject.encode() not in stored
    assert subject.split("@")[0].encode() not in stored
    assert mine["shopper"].id.encode() not in stored


async def test_erasing_twice_finds_nobody_the_second_time(
    client: httpx.AsyncClient, issuer: DevIssuer
) -> None:
    shopper = await enrol(client, issuer)
    await erase(client, shopper)

    response = await client.delete("/v1/me", headers=shopper.headers)

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")


# -- the restore drill ------------------------------------------------------------------------


async def test_restoring_a_backup_taken_before_an_erasure_and_replaying_erases_the_customer_again(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "live") as live:
        with LiveServer(create_app(live.settings())) as server:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                conn = await live.connect()
                try:
                    _, till_key = await till(conn)
                finally:
                    await conn.close()
                erased = await enrol(http, live.issuer, card=fresh_card(), till=till_key)
                bystander = await enrol(http, live.issuer, card=fresh_card(), till=till_key)
                for shopper in (erased, bystander):
                    await keep(http, shopper, preference("drill"))
                    await grant(http, shopper, "pos")
                    assert (
                        await look_up(http, till_key, card=shopper.card or "")
                    ).status_code == 200

                backup = tmp_path / "before-erasure.dump"
                backup.write_bytes(await asyncio.to_thread(pg_dump, live.url, "--format=custom"))
                await erase(http, erased)

        name, url = await create_database(database.server_url, "restored")
        restored = replace(live, name=name, url=url)
        try:
            await asyncio.to_thread(
                pg_tool,
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--dbname",
                db.asyncpg_dsn(url),
                str(backup),
            )
            assert await enrolled(restored, erased.id)  # the backup predates the erasure

            # the operator carries the live database's tombstones over to the restored one
            tombstones = tmp_path / "tombstones.json"
            code, output = await prefs(live, "erasures", "export", "--output", str(tombstones))
            assert code == 0, output
            assert erased.subject.encode() not in tombstones.read_bytes()
            code, output = await prefs(restored, "erasures", "replay", "--from", str(tombstones))
            assert code == 0, output
            assert "1 customers erased again" in output

            assert not await enrolled(restored, erased.id)
            assert await enrolled(restored, bystander.id)
            with LiveServer(create_app(restored.settings())) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                    assert (
                        await look_up(http, till_key, card=erased.card or "")
                    ).status_code == 404
                    assert (
                        await look_up(http, till_key, card=bystander.card or "")
                    ).status_code == 200
                    assert (await http.get("/v1/me", headers=erased.headers)).status_code == 404
                    assert (await http.get("/v1/me", headers=bystander.headers)).status_code == 200

            # the tombstones now live in the restored database too: replaying again finds nothing
            code, output = await prefs(restored, "erasures", "replay")
            assert code == 0, output
            assert "0 customers erased again" in output
        finally:
            await drop_database(database.server_url, name)


async def prefs(where: OwnDatabase, *args: str) -> tuple[int, str]:
    return await run_prefs(
        *args,
        database_url=where.url,
        data_dir=where.data_dir,
        master_keys=where.master_keys,
        index_keys=where.index_keys,
    )


async def enrolled(where: OwnDatabase, customer_id: str) -> bool:
    conn = await where.connect()
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM customers WHERE customer_id = $1", uuid.UUID(customer_id)
        )
        return bool(rows)
    finally:
        await conn.close()
