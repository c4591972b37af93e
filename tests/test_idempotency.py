"""Idempotency-Key on every reorder-creating request: a retried request never orders twice."""

from __future__ import annotations

import asyncio
import uuid

from prefs import idempotency
from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.partner import (
    PROBLEM_JSON,
    access_log,
    known_as,
    my_reorders,
    partner_key,
    partner_reorder,
    reference,
    reorder,
)
from tests.support.stores import FROM_HIGH_STREET
from tests.support.till import BOOTS

REORDER_ROWS = "SELECT count(*) FROM reorders WHERE customer_id = $1"


async def test_a_replayed_reorder_returns_the_first_answer_and_orders_nothing_more(
    client, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer)

    first = await reorder(client, customer, chinos["id"], quantity=2, key="retry-me")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    replay = await reorder(client, customer, chinos["id"], quantity=2, key="retry-me")
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 1
    assert [r["id"] for r in await my_reorders(client, customer)] == [first.json()["id"]]

    # The replay still answers after the reorder moved on: it is the first answer, as it was.
    cancelled = await client.post(
        f"/v1/me/reorders/{first.json()['id']}/cancel", headers=customer.headers
    )
    assert cancelled.json()["state"] == "cancelled"
    late_replay = await reorder(client, customer, chinos["id"], quantity=2, key="retry-me")
    assert late_replay.content == first.content


async def test_the_same_key_with_a_different_request_is_refused(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer)
    shirt = await keep(client, customer, {"product": {"sku": "OX-1", "name": "Oxford Shirt"}})
    assert (await reorder(client, customer, chinos["id"], quantity=1, key="k-1")).status_code == 201

    for different in (
        reorder(client, customer, chinos["id"], quantity=3, key="k-1"),
        reorder(client, customer, shirt["id"], quantity=1, key="k-1"),
    ):
        response = await different
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
        assert "Idempotency-Key" in response.json()["detail"]
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 1


async def test_a_reorder_without_an_idempotency_key_is_a_400(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)

    missing = await client.post(
        f"/v1/me/preferences/{chinos['id']}/reorders",
        headers=customer.headers,
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )
    assert missing.status_code == 400
    assert missing.headers["content-type"].startswith(PROBLEM_JSON)
    assert "Idempotency-Key" in missing.json()["detail"]
    from_partner = await client.post(
        "/v1/partner/reorders",
        headers=bearer(api_key),
        json={"customer": ref, "preference": chinos["id"], "quantity": 1},
    )
    assert from_partner.status_code == 400
    assert "Idempotency-Key" in from_partner.json()["detail"]
    too_long = await reorder(client, customer, chinos["id"], key="x" * 201)
    assert too_long.status_code == 400
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 0


async def test_twenty_simultaneous_duplicates_create_exactly_one_reorder(
    client, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer)

    answers = await asyncio.gather(
        *(
            reorder(client, customer, chinos["id"], quantity=1, key="double-click")
            for _ in range(20)
        )
    )
    assert {a.status_code for a in answers} == {201}, [
        a.text for a in answers if a.status_code != 201
    ]
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 1


async def test_one_customers_key_does_not_collide_with_anothers(client, conn, new_customer):
    alice, bob = await new_customer(), await new_customer()
    alices = await keep(client, alice)
    bobs = await keep(client, bob)

    for_alice = await reorder(client, alice, alices["id"], key="same-key")
    for_bob = await reorder(client, bob, bobs["id"], key="same-key")
    assert for_alice.status_code == for_bob.status_code == 201
    assert "idempotent-replayed" not in for_bob.headers
    assert for_alice.json()["id"] != for_bob.json()["id"]
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(alice.id)) == 1
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(bob.id)) == 1


async def test_partner_reorders_are_idempotent_too(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    _, other_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product", "attributes"])
    ref = await reference(client, customer, partner.partner_id)
    chinos["id"] = await known_as(conn, partner.partner_id, customer, chinos["id"])

    first = await partner_reorder(client, api_key, ref, chinos["id"], quantity=1, key="ptn-1")
    assert first.status_code == 201, first.text
    replay = await partner_reorder(client, api_key, ref, chinos["id"], quantity=1, key="ptn-1")
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == first.content
    mismatch = await partner_reorder(client, api_key, ref, chinos["id"], quantity=2, key="ptn-1")
    assert mismatch.status_code == 422

    together = await asyncio.gather(
        *(
            partner_reorder(client, api_key, ref, chinos["id"], quantity=4, key="ptn-2")
            for _ in range(10)
        )
    )
    assert {a.status_code for a in together} == {201}
    assert len({a.content for a in together}) == 1
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 2

    # Another partner's key space is its own (it gets the same 404 as for any ref it does not know).
    elsewhere = await partner_reorder(client, other_key, ref, chinos["id"], quantity=1, key="ptn-1")
    assert elsewhere.status_code == 404
    assert "idempotent-replayed" not in elsewhere.headers


def hashed(vault, owner: str, key: str) -> str:
    """The Idempotency-Key as the table holds it: a keyed hash, never the key."""
    return idempotency.stored_keys(vault.index, owner, key)[vault.index.primary]


async def test_expired_keys_are_purged_and_a_reused_key_then_orders_again(
    client, conn, new_customer, vault
):
    customer = await new_customer()
    chinos = await keep(client, customer)
    first = await reorder(client, customer, chinos["id"], key="old-key")
    kept = await reorder(client, customer, chinos["id"], key="fresh-key")
    assert first.status_code == kept.status_code == 201
    owner = f"customer:{customer.id}"
    expiry = await conn.fetchval(
        "SELECT expires_at - created_at FROM idempotency_keys WHERE owner = $1 AND key = $2",
        owner,
        hashed(vault, owner, "fresh-key"),
    )
    assert expiry.total_seconds() == 24 * 3600

    await conn.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
        "WHERE owner = $1 AND key = $2",
        owner,
        hashed(vault, owner, "old-key"),
    )
    purged = await idempotency.purge_expired(conn)
    assert purged >= 1
    keys = {
        r["key"]
        for r in await conn.fetch("SELECT key FROM idempotency_keys WHERE owner = $1", owner)
    }
    assert keys == {hashed(vault, owner, "fresh-key")}

    again = await reorder(client, customer, chinos["id"], key="old-key")
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert await conn.fetchval(REORDER_ROWS, uuid.UUID(customer.id)) == 3


async def test_an_expired_key_is_forgotten_even_before_the_purge_runs(
    client, conn, new_customer, vault
):
    customer = await new_customer()
    chinos = await keep(client, customer)
    first = await reorder(client, customer, chinos["id"], quantity=1, key="stale")
    await conn.execute(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
        "WHERE owner = $1 AND key = $2",
        f"customer:{customer.id}",
        hashed(vault, f"customer:{customer.id}", "stale"),
    )

    # A different body is no mismatch any more: the old record is gone.
    again = await reorder(client, customer, chinos["id"], quantity=5, key="stale")
    assert again.status_code == 201, again.text
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert again.json()["quantity"] == 5


async def test_stored_answers_are_encrypted(client, conn, new_customer, vault):
    customer = await new_customer()
    chinos = await keep(client, customer)
    await reorder(client, customer, chinos["id"], key="sealed")
    stored = await conn.fetchval(
        "SELECT response_ct FROM idempotency_keys WHERE owner = $1 AND key = $2",
        f"customer:{customer.id}",
        hashed(vault, f"customer:{customer.id}", "sealed"),
    )
    assert stored
    for plaintext in ("Classic Chino", "CL-CHINO-3434", "khaki", "pockets"):
        assert plaintext.encode() not in stored


async def test_a_partner_replay_after_withdrawal_shows_nothing(client, new_customer, conn):
    from prefs import credentials

    cred, key = await credentials.create(conn, "partner", "Replay Tailors")
    alice = await new_customer()
    pref = (await client.post("/v1/me/preferences", headers=alice.headers, json=CHINOS)).json()
    audience = f"partner:{cred.partner_id}"
    await client.put(
        f"/v1/me/consents/{audience}", headers=alice.headers, json={"fields": ["product"]}
    )
    consents = (await client.get("/v1/me/consents", headers=alice.headers)).json()["items"]
    ref = next(c["reference"] for c in consents if c["audience"] == audience)
    mine = await known_as(conn, cred.partner_id, alice, pref["id"])
    body = {"customer": ref, "preference": mine, "quantity": 1}
    headers = {**bearer(key), "Idempotency-Key": "replay-after-withdrawal"}
    first = await client.post("/v1/partner/reorders", headers=headers, json=body)
    assert first.status_code == 201, first.text
    await client.delete(f"/v1/me/consents/{audience}", headers=alice.headers)
    replay = await client.post("/v1/partner/reorders", headers=headers, json=body)
    stranger = await client.post(
        "/v1/partner/reorders",
        headers={**bearer(key), "Idempotency-Key": "unknown-ref"},
        json={**body, "customer": "unknown-ref"},
    )
    assert replay.status_code == stranger.status_code == 404
    assert replay.content == stranger.content
    assert replay.headers.get("Idempotent-Replayed") is None


async def test_a_partner_replay_shows_no_more_than_the_grant_in_force_and_is_logged(
    client, new_customer, conn
):
    partner, key = await partner_key(conn)
    customer = await new_customer()
    chinos, boots = await keep(client, customer), await keep(client, customer, BOOTS)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes", "note"])
    ref = await reference(client, customer, partner.partner_id)
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])
    first = await partner_reorder(client, key, ref, known, key="narrowed-later")
    assert first.status_code == 201, first.text
    assert first.json()["item"]["note"] == CHINOS["note"]

    async def logged() -> int:
        entries = await access_log(client, customer)
        return len([e for e in entries if e["who"]["kind"] == "partner"])

    before = await logged()
    await grant(client, customer, audience, ["product"])
    replay = await partner_reorder(client, key, ref, known, key="narrowed-later")
    assert replay.status_code == 201, replay.text
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["item"] == {"product": CHINOS["product"]}
    assert replay.json()["fields"] == ["product"]
    assert CHINOS["note"] not in replay.text
    assert {k: v for k, v in replay.json().items() if k not in ("item", "fields")} == {
        k: v for k, v in first.json().items() if k not in ("item", "fields")
    }
    assert await logged() == before + 1  # the replay disclosed the product: it is in the log

    # No longer granted at all: the replay answers exactly as a new request would now.
    await grant(client, customer, audience, ["product"], preferences=[boots["id"]])
    replay = await partner_reorder(client, key, ref, known, key="narrowed-later")
    fresh = await partner_reorder(client, key, ref, known)
    assert replay.status_code == fresh.status_code == 404
    assert replay.content == fresh.content
    assert replay.headers.get("idempotent-replayed") is None
    assert await logged() == before + 1
