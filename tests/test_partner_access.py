"""What partners can see and do: their own unlinkable reference per customer, exactly the granted
fields, nothing after withdrawal; and only the right kind of key opens each door."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from prefs import credentials, db
from prefs.reorders import service as reorders
from prefs.reorders.schemas import ReorderCreate
from tests.support.customer import CHINOS, bearer, grant, keep, withdraw
from tests.support.partner import (
    PROBLEM_JSON,
    access_log,
    feed_page,
    insights_key,
    known_as,
    my_reorders,
    partner_key,
    partner_reorder,
    pull,
    reference,
    reorder,
    set_status,
)
from tests.support.stores import FROM_HIGH_STREET, in_directory
from tests.support.till import till_key

SHIRT: dict[str, Any] = {
    "product": {
        "sku": "OX-SHIRT-42",
        "name": "Oxford Shirt",
        "brand": "Acme",
        "category": "shirts",
    },
    "attributes": {"collar": "42"},
}
BOOTS: dict[str, Any] = {
    "product": {"sku": "DB-BOOT-11", "name": "Desert Boot", "brand": "Clarks", "category": "shoes"},
    "attributes": {"size": "11", "width": "wide"},
    "note": "Half a size up in winter.",
}


async def read_preferences(client: httpx.AsyncClient, api_key: str, ref: str) -> httpx.Response:
    return await client.get(f"/v1/partner/customers/{ref}/preferences", headers=bearer(api_key))


async def test_each_partner_sees_its_own_stable_reference_for_a_customer(
    client, conn, new_customer
):
    customer, neighbour = await new_customer(), await new_customer()
    tailor, tailor_key = await partner_key(conn)
    shop, shop_key = await partner_key(conn)
    chinos = await keep(client, customer)
    neighbours = await keep(client, neighbour)
    for partner in (tailor, shop):
        await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    await grant(client, neighbour, f"partner:{tailor.partner_id}", ["product"])

    tailor_ref = await reference(client, customer, tailor.partner_id)
    shop_ref = await reference(client, customer, shop.partner_id)
    assert tailor_ref != shop_ref
    assert await reference(client, neighbour, tailor.partner_id) not in (tailor_ref, shop_ref)
    for ref in (tailor_ref, shop_ref):
        assert customer.id not in ref
        assert uuid.UUID(customer.id).hex not in ref
        assert customer.subject not in ref

    # Stable: across calls, in the feed, in a partner's own reorder, after a withdrawal and regrant.
    assert await reference(client, customer, tailor.partner_id) == tailor_ref
    placed = await reorder(client, customer, chinos["id"], f"partner:{tailor.partner_id}")
    items, _ = await pull(client, tailor_key)
    assert [(item["id"], item["customer"]) for item in items] == [(placed.json()["id"], tailor_ref)]
    shops_chinos = await known_as(conn, shop.partner_id, customer, chinos["id"])
    submitted = await partner_reorder(client, shop_key, shop_ref, shops_chinos)
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["customer"] == shop_ref
    await withdraw(client, customer, f"partner:{tailor.partner_id}")
    await grant(client, customer, f"partner:{tailor.partner_id}", ["product"])
    assert await reference(client, customer, tailor.partner_id) == tailor_ref
    assert (await read_preferences(client, tailor_key, tailor_ref)).status_code == 200

    # The tailor's reference means nothing to the shop, and looks like any unknown reference.
    unknown = await read_preferences(client, shop_key, "no-such-reference")
    assert unknown.status_code == 404
    foreign = await read_preferences(client, shop_key, tailor_ref)
    assert (foreign.status_code, foreign.json()) == (unknown.status_code, unknown.json())
    unknown_reorder = await partner_reorder(client, shop_key, "no-such-reference", shops_chinos)
    foreign_reorder = await partner_reorder(client, shop_key, tailor_ref, shops_chinos)
    assert unknown_reorder.status_code == foreign_reorder.status_code == 404
    assert foreign_reorder.json() == unknown_reorder.json()
    # Nor can the tailor use the neighbour's preference under this customer's reference.
    neighbours_id = await known_as(conn, tailor.partner_id, neighbour, neighbours["id"])
    crossed = await partner_reorder(client, tailor_key, tailor_ref, neighbours_id)
    assert crossed.status_code == 404
    assert {r["origin"] for r in await my_reorders(client, customer)} == {"customer", "partner"}
    assert len(await my_reorders(client, customer)) == 2
    assert await my_reorders(client, neighbour) == []


async def test_a_partner_reads_exactly_the_granted_fields_of_the_granted_preferences(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos, shirt, boots = [await keep(client, customer, body) for body in (CHINOS, SHIRT, BOOTS)]
    await grant(
        client,
        customer,
        f"partner:{partner.partner_id}",
        ["product", "attributes"],
        preferences=[chinos["id"], boots["id"]],
    )
    ref = await reference(client, customer, partner.partner_id)

    response = await read_preferences(client, api_key, ref)
    assert response.status_code == 200, response.text
    # numbered 1..n, with the partner's own ids: nothing tells it that a third one exists
    assert response.json()["next"] is None  # the list shape every list has: all in one page
    shown = response.json()["items"]
    assert [{k: v for k, v in p.items() if k != "id"} for p in shown] == [
        {
            "rank": rank,
            "status": p["status"],
            "product": p["product"],
            "attributes": p["attributes"],
        }
        for rank, p in enumerate((chinos, boots), start=1)
    ]
    assert not {p["id"] for p in shown} & {chinos["id"], boots["id"]}
    assert CHINOS["note"] not in response.text
    assert BOOTS["note"] not in response.text

    [entry] = [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"]
    assert entry["who"]["partner_id"] == str(partner.partner_id)
    assert entry["who"]["name"] == partner.name
    assert entry["purpose"] == "partner-read"
    assert entry["fields"] == ["product", "attributes"]
    assert sorted(p["id"] for p in entry["preferences"]) == sorted([chinos["id"], boots["id"]])

    # Narrowed to notes, of every preference: now only notes are shown, no products or sizes.
    await grant(client, customer, f"partner:{partner.partner_id}", ["note"])
    notes = await read_preferences(client, api_key, ref)
    assert [{k: v for k, v in p.items() if k != "id"} for p in notes.json()["items"]] == [
        {"rank": p["rank"], "status": p["status"], "note": p.get("note")}
        for p in (chinos, shirt, boots)
    ]
    # the partner's ids are stable across reads
    assert {p["id"] for p in shown} <= {p["id"] for p in notes.json()["items"]}
    assert (
        len([e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"]) == 2
    )


async def test_after_withdrawal_the_partner_can_only_finish_what_it_already_accepted(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes"])
    ref = await reference(client, customer, partner.partner_id)
    accepted = (await reorder(client, customer, chinos["id"], audience)).json()
    waiting = (await reorder(client, customer, chinos["id"], audience)).json()
    assert (await set_status(client, api_key, accepted["id"], "accepted")).status_code == 200
    assert (await read_preferences(client, api_key, ref)).status_code == 200
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])
    assert (await partner_reorder(client, api_key, ref, known)).status_code == 201

    await withdraw(client, customer, audience)

    unknown = await read_preferences(client, api_key, "no-such-reference")
    refused = await read_preferences(client, api_key, ref)
    assert refused.status_code == 404
    assert refused.headers["content-type"].startswith(PROBLEM_JSON)
    assert (refused.status_code, refused.json()) == (unknown.status_code, unknown.json())
    refused_reorder = await partner_reorder(client, api_key, ref, known)
    unknown_reorder = await partner_reorder(client, api_key, "no-such-reference", known)
    assert refused_reorder.status_code == 404
    assert refused_reorder.json() == unknown_reorder.json()
    # Nor can the customer send new reorders to it any more.
    assert (await reorder(client, customer, chinos["id"], audience)).status_code == 409

    # The one it had not accepted yet is cancelled; the accepted one stays its to finish.
    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states[waiting["id"]] == "cancelled"
    assert states[accepted["id"]] == "accepted"
    assert list(states.values()).count("cancelled") == 2  # and the partner's own, unaccepted one
    await pull(client, api_key, want=3)  # all three committed and past every older transaction
    everything = await feed_page(client, api_key)
    by_id = {item["id"]: item for item in everything["items"]}
    assert by_id[accepted["id"]]["state"] == "accepted"
    assert by_id[accepted["id"]]["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
    }
    assert by_id[waiting["id"]]["state"] == "cancelled"
    assert by_id[waiting["id"]]["item"] is None
    assert (await set_status(client, api_key, waiting["id"], "accepted")).status_code == 409

    finished = await set_status(client, api_key, accepted["id"], "fulfilled")
    assert finished.status_code == 200, finished.text
    assert finished.json()["state"] == "fulfilled"
    assert {r["id"]: r["state"] for r in await my_reorders(client, customer)}[
        accepted["id"]
    ] == "fulfilled"
    after = {item["id"]: item for item in (await feed_page(client, api_key))["items"]}
    assert after[accepted["id"]]["item"] is None  # finished: its details are no longer shown


# Every endpoint a partner or insights key opens, and the customer's reorder endpoints.
async def test_only_the_right_kind_of_credential_is_accepted(client, conn, new_customer, issuer):
    customer = await new_customer()
    chinos = await keep(client, customer)
    partner, ptn = await partner_key(conn)
    _, ins = await insights_key(conn)
    _, pos = await till_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)
    addressed = (
        await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
    ).json()
    mine = (await reorder(client, customer, chinos["id"], FROM_HIGH_STREET)).json()

    revoked = {}
    for kind, extra in (
        ("partner", {"partner_id": partner.partner_id}),
        ("insights", {}),
        ("pos", {"store": await in_directory(conn, "0421")}),
    ):
        credential, key = await credentials.create(conn, kind, f"Revoked {kind}", **extra)  # type: ignore[arg-type]
        await credentials.revoke(conn, credential.id)
        revoked[kind] = key
    principals: dict[str, dict[str, str]] = {
        "customer": customer.headers,
        "pos": bearer(pos),
        "partner": bearer(ptn),
        "insights": bearer(ins),
        "revoked partner": bearer(revoked["partner"]),
        "revoked insights": bearer(revoked["insights"]),
        "revoked pos": bearer(revoked["pos"]),
        "forged partner": bearer("ptn_" + "A" * 43),
        "forged insights": bearer("ins_" + "A" * 43),
        "unenrolled token": bearer(issuer.mint(f"stranger-{uuid.uuid4()}@example.test")),
        "no auth": {},
        "basic auth": {"Authorization": "Basic dXNlcjpwYXNz"},
        "empty bearer": {"Authorization": "Bearer"},
    }

    known = await known_as(conn, partner.partner_id, customer, chinos["id"])

    def partner_reorder_body() -> dict[str, Any]:
        return {"customer": ref, "preference": known, "quantity": 1}

    endpoints: list[tuple[str, str, str, dict[str, Any] | None]] = [
        ("partner", "GET", "/v1/partner/reorders", None),
        (
            "partner",
            "POST",
            f"/v1/partner/reorders/{addressed['id']}/status",
            {"state": "accepted"},
        ),
        ("partner", "POST", "/v1/partner/reorders", partner_reorder_body()),
        ("partner", "GET", f"/v1/partner/customers/{ref}/preferences", None),
        ("insights", "GET", "/v1/insights/discontinued-demand", None),
        ("customer", "GET", "/v1/partners", None),
        (
            "customer",
            "POST",
            f"/v1/me/preferences/{chinos['id']}/reorders",
            {"quantity": 1, "fulfiller": FROM_HIGH_STREET},
        ),
        ("customer", "GET", "/v1/stores", None),
        ("pos", "GET", "/v1/pos/reorders", None),
        ("customer", "GET", "/v1/me/reorders", None),
        ("customer", "POST", f"/v1/me/reorders/{mine['id']}/cancel", None),
    ]
    before = await conn.fetchval(
        "SELECT count(*) FROM reorders WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    wrong = []
    for who, headers in principals.items():
        for right, method, path, body in endpoints:
            request_headers = {**headers, "Idempotency-Key": str(uuid.uuid4())}
            response = await client.request(method, path, headers=request_headers, json=body)
            if who == right:
                if response.status_code >= 400:
                    wrong.append(
                        f"{who} refused on {method} {path}: {response.status_code} {response.text}"
                    )
                continue
            if who == "unenrolled token" and right == "customer":
                # A valid token for someone who never enrolled: they may browse the partner
                # and store directories, but nothing of theirs exists.
                allowed = (200,) if path in ("/v1/partners", "/v1/stores") else (404,)
                if response.status_code not in allowed:
                    wrong.append(f"{who} on {method} {path}: {response.status_code}")
                continue
            if response.status_code not in (401, 403) or not response.headers.get(
                "content-type", ""
            ).startswith(PROBLEM_JSON):
                wrong.append(
                    f"{who} on {method} {path}: {response.status_code} {response.text[:120]}"
                )
    assert wrong == []
    # The refused requests changed nothing: only the right principals' two new reorders exist.
    after = await conn.fetchval(
        "SELECT count(*) FROM reorders WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert after == before + 2


async def test_a_reorder_placed_while_consent_is_withdrawn_is_cancelled_with_the_rest(
    client, conn, database, vault, new_customer
):
    """The reorder's transaction read the grant before the withdrawal: it must not outlive it."""
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes"])

    placing = await db.connect(database.url)
    try:
        transaction = placing.transaction()
        await transaction.start()
        try:
            placed = await reorders.create_for_customer(
                placing,
                vault,
                uuid.UUID(customer.id),
                uuid.UUID(chinos["id"]),
                ReorderCreate(quantity=1, fulfiller=audience),
            )
            withdrawal = asyncio.create_task(
                client.delete(f"/v1/me/consents/{audience}", headers=customer.headers)
            )
            await asyncio.sleep(0.5)
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    finally:
        await placing.close()
    assert (await withdrawal).status_code == 200

    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states == {str(placed.id): "cancelled"}
    items, _ = await pull(client, api_key)
    assert [(item["id"], item["state"], item["item"]) for item in items] == [
        (str(placed.id), "cancelled", None)
    ]
    assert [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"] == []


async def test_once_consent_expires_the_partner_no_longer_sees_unaccepted_reorders(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    await grant(
        client, customer, audience, ["product", "attributes"], expires_at=expires.isoformat()
    )
    placed = await reorder(client, customer, chinos["id"], audience)
    assert placed.status_code == 201, placed.text
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)

    # Nobody has looked at the consents since: the partner's own poll must not show the item.
    items, _ = await pull(client, api_key)
    assert [(item["id"], item["state"], item["item"]) for item in items] == [
        (placed.json()["id"], "cancelled", None)
    ]
    assert (await set_status(client, api_key, placed.json()["id"], "accepted")).status_code == 409
    assert [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"] == []


async def test_consent_to_a_partner_that_does_not_exist_is_refused(client, new_customer):
    customer = await new_customer()
    await keep(client, customer)
    response = await client.put(
        f"/v1/me/consents/partner:{uuid.uuid4()}",
        headers=customer.headers,
        json={"fields": ["product"]},
    )
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert (await client.get("/v1/me/consents", headers=customer.headers)).json() == {
        "items": [],
        "next": None,
    }


async def test_narrowing_a_grant_cancels_the_partners_waiting_reorders_outside_it(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos, boots = await keep(client, customer), await keep(client, customer, BOOTS)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes", "note"])
    kept = (await reorder(client, customer, chinos["id"], audience)).json()
    dropped = (await reorder(client, customer, boots["id"], audience)).json()
    items, _ = await pull(client, api_key, want=2)
    assert {item["id"]: item["item"].get("note") for item in items} == {
        kept["id"]: CHINOS["note"],
        dropped["id"]: BOOTS["note"],
    }

    # Only the chinos now, and without the note.
    await grant(client, customer, audience, ["product", "attributes"], preferences=[chinos["id"]])

    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states == {kept["id"]: "requested", dropped["id"]: "cancelled"}
    by_id = {item["id"]: item for item in (await feed_page(client, api_key))["items"]}
    assert by_id[dropped["id"]]["item"] is None
    assert by_id[kept["id"]]["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
    }
    assert by_id[kept["id"]]["fields"] == ["product", "attributes"]
    assert (await set_status(client, api_key, dropped["id"], "accepted")).status_code == 409


async def test_an_accepted_reorder_shows_its_partner_only_what_fulfilment_needs_for_a_while(
    client, conn, new_customer, settings
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes", "note"])
    placed = (await reorder(client, customer, chinos["id"], audience)).json()
    await pull(client, api_key)
    assert (await set_status(client, api_key, placed["id"], "accepted")).status_code == 200

    async def as_partner_sees() -> dict[str, Any]:
        """Restarting the feed from the beginning, as a partner may at any time."""
        [item] = [i for i in (await feed_page(client, api_key))["items"] if i["id"] == placed["id"]]
        return item

    assert (await as_partner_sees())["item"]["note"] == CHINOS["note"]

    # Withdrawn: what it needs to make the chinos stays, the note in the customer's words goes.
    await withdraw(client, customer, audience)
    seen = await as_partner_sees()
    assert seen["state"] == "accepted"
    assert seen["item"] == {"product": CHINOS["product"], "attributes": CHINOS["attributes"]}
    assert CHINOS["note"] not in str(seen)

    # And only for a while after acceptance.
    window = settings.partner_accepted_window_days
    await conn.execute(
        "UPDATE reorders SET accepted_at = now() - make_interval(days => $2)"
        " WHERE customer_id = $1",
        uuid.UUID(customer.id),
        window,
    )
    seen = await as_partner_sees()
    assert (seen["state"], seen["item"], seen["fields"]) == ("accepted", None, [])
    # it can still close the order
    assert (await set_status(client, api_key, placed["id"], "fulfilled")).status_code == 200


async def test_a_deleted_preference_takes_the_partners_id_for_it_along(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos, boots = await keep(client, customer), await keep(client, customer, BOOTS)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)
    shown = (await read_preferences(client, api_key, ref)).json()["items"]
    gone = next(p["id"] for p in shown if p["product"]["sku"] == CHINOS["product"]["sku"])

    deleted = await client.delete(
        f"/v1/me/preferences/{chinos['id']}", headers={**customer.headers, "If-Match": "*"}
    )
    assert deleted.status_code == 204, deleted.text

    left = await conn.fetchval(
        "SELECT count(*) FROM partner_preference_refs WHERE customer_id = $1 AND ref = $2",
        uuid.UUID(customer.id),
        uuid.UUID(gone),
    )
    assert left == 0
    after = (await read_preferences(client, api_key, ref)).json()["items"]
    assert [(p["rank"], p["product"]["sku"]) for p in after] == [(1, boots["product"]["sku"])]
    assert gone not in {p["id"] for p in after}
    refused = await partner_reorder(client, api_key, ref, gone)
    unknown = await partner_reorder(client, api_key, ref, str(uuid.uuid4()))
    assert refused.status_code == unknown.status_code == 404
    assert refused.json() == unknown.json()


async def test_a_status_change_answers_what_the_move_did(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes", "note"])
    placed = (await reorder(client, customer, chinos["id"], audience)).json()

    accepted = await set_status(client, api_key, placed["id"], "accepted")
    assert accepted.status_code == 200, accepted.text
    answer = accepted.json()
    # what was accepted, as the feed shows it: the partner need not read the feed to fulfil it
    assert (answer["previous_state"], answer["state"]) == ("requested", "accepted")
    assert answer["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
        "note": CHINOS["note"],
    }
    assert answer["fields"] == ["product", "attributes", "note"]
    log = [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"]
    assert len(log) == 1  # showing the item is a disclosure like any other

    again = (await set_status(client, api_key, placed["id"], "accepted")).json()
    assert (again["previous_state"], again["state"]) == ("accepted", "accepted")

    fulfilled = (await set_status(client, api_key, placed["id"], "fulfilled")).json()
    assert (fulfilled["previous_state"], fulfilled["state"]) == ("accepted", "fulfilled")
    assert (fulfilled["item"], fulfilled["fields"]) == (None, [])  # finished: no details


async def test_partners_read_preferences_in_the_list_shape_or_the_old_array_on_request(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)

    current = await read_preferences(client, api_key, ref)
    assert current.headers["content-type"].startswith("application/json")
    assert set(current.json()) == {"items", "next"}
    assert current.json()["next"] is None
    old = await client.get(
        f"/v1/partner/customers/{ref}/preferences",
        headers={**bearer(api_key), "Accept": "application/vnd.prefs.v1.0+json"},
    )
    assert old.status_code == 200, old.text
    assert old.headers["content-type"].startswith("application/vnd.prefs.v1.0+json")
    assert old.json() == current.json()["items"]
    assert "accept" in current.headers["vary"].lower()


async def test_withdrawing_a_partners_consent_says_which_reorders_it_cancelled(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product", "attributes"])
    ref = await reference(client, customer, partner.partner_id)
    accepted = (await reorder(client, customer, chinos["id"], audience)).json()
    waiting = (await reorder(client, customer, chinos["id"], audience, quantity=2)).json()
    assert (await set_status(client, api_key, accepted["id"], "accepted")).status_code == 200
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])
    proposal = (await partner_reorder(client, api_key, ref, known)).json()

    answer = await withdraw(client, customer, audience)
    assert sorted(answer["cancelled_reorders"], key=lambda r: r["origin"]) == [
        {"id": waiting["id"], "preference_id": chinos["id"], "quantity": 2, "origin": "customer"},
        {"id": proposal["id"], "preference_id": chinos["id"], "quantity": 1, "origin": "partner"},
    ]  # the accepted one stays the partner's to finish
    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states == {
        accepted["id"]: "accepted",
        waiting["id"]: "cancelled",
        proposal["id"]: "cancelled",
    }


async def test_narrowing_a_partners_consent_says_which_reorders_it_cancelled(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, _ = await partner_key(conn)
    chinos, boots = await keep(client, customer), await keep(client, customer, BOOTS)
    audience = f"partner:{partner.partner_id}"
    await grant(client, customer, audience, ["product"])
    dropped = (await reorder(client, customer, chinos["id"], audience)).json()
    await reorder(client, customer, boots["id"], audience)

    answer = await grant(client, customer, audience, ["product"], preferences=[boots["id"]])
    assert answer["cancelled_reorders"] == [
        {"id": dropped["id"], "preference_id": chinos["id"], "quantity": 1, "origin": "customer"}
    ]
    unchanged = await grant(client, customer, "pos", ["product"])
    assert unchanged["cancelled_reorders"] == []
