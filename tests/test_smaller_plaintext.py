"""Smaller personal data at rest (finding 9): Idempotency-Key values are kept only as keyed hashes,
and a preference's purchase history (purchases, last_purchased_on) is encrypted like its content."""

from __future__ import annotations

import secrets
import uuid

import httpx

from prefs import idempotency
from prefs.customer_keys import data_key
from prefs.preferences import service as preferences
from tests.support.customer import keep
from tests.support.rights import enrol, preference, reorder
from tests.support.stores import FROM_HIGH_STREET
from tests.test_privacy_at_rest import copy_block, encodings, pg_dump


async def test_an_idempotency_key_is_kept_only_as_a_keyed_hash_and_still_replays(
    client: httpx.AsyncClient, conn, database, issuer
):
    shopper = await enrol(client, issuer)
    kept = await keep(client, shopper, preference("idem"))
    idempotency_key = f"jane.doe.{secrets.token_hex(4)}@example-mail.test"
    first = await reorder(client, shopper, kept["id"], key=idempotency_key)

    replay = await client.post(
        f"/v1/me/preferences/{kept['id']}/reorders",
        headers={**shopper.headers, "Idempotency-Key": idempotency_key},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == first
    other_body = await client.post(
        f"/v1/me/preferences/{kept['id']}/reorders",
        headers={**shopper.headers, "Idempotency-Key": idempotency_key},
        json={"quantity": 2, "fulfiller": FROM_HIGH_STREET},
    )
    assert other_body.status_code == 422, other_body.text

    stored = await conn.fetch(
        "SELECT key FROM idempotency_keys WHERE customer_id = $1", uuid.UUID(shopper.id)
    )
    assert len(stored) == 1
    dumped = "\n".join(copy_block(pg_dump(database.url), "idempotency_keys"))
    for part in (idempotency_key, idempotency_key.split("@")[0]):
        for form in encodings(part):
            assert form not in dumped, f"the Idempotency-Key is in the dump as {form!r}"


async def test_purchases_and_the_last_purchase_date_are_encrypted_at_rest(
    client: httpx.AsyncClient, conn, database, issuer
):
    shopper = await enrol(client, issuer)
    purchases = 700 + secrets.randbelow(200)
    body = {**preference("bought"), "purchases": purchases, "last_purchased_on": "2019-07-23"}
    kept = await keep(client, shopper, body)
    edited = await client.patch(
        f"/v1/me/preferences/{kept['id']}",
        headers={**shopper.headers, "If-Match": "*"},
        json={"purchases": purchases + 1, "last_purchased_on": "2018-03-29"},
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["purchases"], edited.json()["last_purchased_on"]) == (
        purchases + 1,
        "2018-03-29",
    )
    listed = await client.get("/v1/me/preferences", headers=shopper.headers)
    [mine] = [p for p in listed.json()["items"] if p["id"] == kept["id"]]
    assert (mine["purchases"], mine["last_purchased_on"]) == (purchases + 1, "2018-03-29")

    row = await conn.fetchrow(
        "SELECT * FROM preferences WHERE preference_id = $1", uuid.UUID(kept["id"])
    )
    in_clear = {k: v for k, v in dict(row).items() if not k.endswith("_ct")}
    for value in in_clear.values():
        assert str(value) not in {str(purchases + 1), "2018-03-29"}, in_clear
    rows = [r for r in copy_block(pg_dump(database.url), "preferences") if kept["id"] in r]
    assert len(rows) == 1
    assert "2018-03-29" not in rows[0] and "2019-07-23" not in rows[0]
    assert f"\t{purchases + 1}\t" not in rows[0] and f"\t{purchases}\t" not in rows[0]

    exported = await client.get("/v1/me/export", headers=shopper.headers)
    assert exported.status_code == 200
    [out] = [p for p in exported.json()["preferences"] if p["id"] == kept["id"]]
    assert (out["purchases"], out["last_purchased_on"]) == (purchases + 1, "2018-03-29")


async def test_the_backfill_seals_purchase_histories_and_hashes_keys_stored_in_clear(
    client: httpx.AsyncClient, conn, issuer, vault
):
    shopper = await enrol(client, issuer)
    kept = await keep(client, shopper, preference("legacy"))
    customer_id, pid = uuid.UUID(shopper.id), uuid.UUID(kept["id"])
    key = await data_key(conn, vault, customer_id)
    # as revision 0006 stored them: the purchase history in clear ...
    await conn.execute(
        "UPDATE preferences SET purchases = 4, last_purchased_on = '2020-02-02', purchases_ct = NULL"
        " WHERE customer_id = $1 AND preference_id = $2",
        customer_id,
        pid,
    )
    # ... and the Idempotency-Key verbatim, its answer bound to it
    raw = f"legacy-{secrets.token_hex(4)}"
    first = await reorder(client, shopper, kept["id"], key=raw)
    stored = await conn.fetchrow(
        "SELECT owner, key, response_ct FROM idempotency_keys WHERE customer_id = $1", customer_id
    )
    body = key.decrypt(
        stored["response_ct"], "idempotency_keys", "response", f"{stored['owner']}/{stored['key']}"
    )
    await conn.execute(
        "UPDATE idempotency_keys SET key = $3, key_version = NULL, response_ct = $4"
        " WHERE owner = $1 AND key = $2",
        stored["owner"],
        stored["key"],
        raw,
        key.encrypt(body, "idempotency_keys", "response", f"{stored['owner']}/{raw}"),
    )
    mine = (await client.get(f"/v1/me/preferences/{pid}", headers=shopper.headers)).json()
    assert (mine["purchases"], mine["last_purchased_on"]) == (4, "2020-02-02")  # still read

    assert sum([n async for n in preferences.seal_purchase_backlog(conn, vault)]) >= 1
    assert await idempotency.hash_legacy_keys(conn, vault) >= 1

    row = await conn.fetchrow(
        "SELECT purchases, last_purchased_on, purchases_ct FROM preferences"
        " WHERE customer_id = $1 AND preference_id = $2",
        customer_id,
        pid,
    )
    assert (row["purchases"], row["last_purchased_on"]) == (None, None)
    assert row["purchases_ct"] is not None
    mine = (await client.get(f"/v1/me/preferences/{pid}", headers=shopper.headers)).json()
    assert (mine["purchases"], mine["last_purchased_on"]) == (4, "2020-02-02")
    keys = await conn.fetch(
        "SELECT key, key_version FROM idempotency_keys WHERE customer_id = $1", customer_id
    )
    assert [(k["key"] != raw, k["key_version"]) for k in keys] == [(True, vault.index.primary)]
    replay = await client.post(
        f"/v1/me/preferences/{kept['id']}/reorders",
        headers={**shopper.headers, "Idempotency-Key": raw},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )
    assert replay.status_code == 201, replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == first
    assert [n async for n in preferences.seal_purchase_backlog(conn, vault)] == []
    assert await idempotency.hash_legacy_keys(conn, vault) == 0
