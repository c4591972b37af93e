"""Reorders: the customer buys the discontinued chinos again, from the store or a partner they
chose, and sees every step and every disclosure."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.partner import (
    PROBLEM_JSON,
    access_log,
    feed_page,
    known_as,
    my_reorders,
    partner_key,
    partner_reorder,
    pull,
    reference,
    reorder,
    set_status,
)
from tests.support.stores import FROM_HIGH_STREET

AVAILABLE_CHINOS: dict[str, Any] = {**CHINOS, "status": "available"}


async def test_the_chinos_story_from_discontinued_preference_to_fulfilled_reorder(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn, name=f"Bespoke Tailor {uuid.uuid4().hex[:6]}")

    # The customer keeps the chinos; the shop later drops them from the catalogue.
    chinos = await keep(client, customer, AVAILABLE_CHINOS)
    dropped = await client.patch(
        f"/v1/me/preferences/{chinos['id']}",
        headers={**customer.headers, "If-Match": f'"{chinos["version"]}"'},
        json={"status": "discontinued"},
    )
    assert dropped.status_code == 200, dropped.text
    assert dropped.json()["status"] == "discontinued"

    # The tailor is in the directory; the customer lets it see the product and sizes, not the note.
    directory = await client.get("/v1/partners", headers=customer.headers)
    assert directory.status_code == 200
    assert {
        "id": str(partner.partner_id),
        "name": partner.name,
        "description": "Made-to-order trousers",
    } in directory.json()["items"]
    await grant(client, customer, f"partner:{partner.partner_id}", ["product", "attributes"])

    placed = await reorder(
        client,
        customer,
        chinos["id"],
        f"partner:{partner.partner_id}",
        quantity=2,
        key="chinos-again-1",
    )
    assert placed.status_code == 201, placed.text
    placed_reorder = placed.json()
    assert placed_reorder["state"] == "requested"
    assert placed_reorder["fulfiller"] == f"partner:{partner.partner_id}"
    assert placed_reorder["origin"] == "customer"
    assert placed_reorder["quantity"] == 2
    assert placed_reorder["fields"] == ["product", "attributes"]
    assert placed_reorder["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
    }

    # The tailor pulls it: the granted fields only, under its own reference for the customer.
    items, cursor = await pull(client, api_key)
    assert [item["id"] for item in items] == [placed_reorder["id"]]
    [pulled] = items
    assert pulled["state"] == "requested"
    assert pulled["quantity"] == 2
    assert pulled["fields"] == ["product", "attributes"]
    assert pulled["item"] == {"product": CHINOS["product"], "attributes": CHINOS["attributes"]}
    assert "note" not in pulled["item"]
    assert CHINOS["note"] not in str(pulled)
    assert pulled["customer"] not in (customer.id, customer.subject)
    assert customer.id not in str(pulled)
    # Nothing new on the next poll.
    assert (await feed_page(client, api_key, cursor))["items"] == []

    accepted = await set_status(client, api_key, pulled["id"], "accepted")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "accepted"
    assert accepted.json()["item"] == pulled["item"]  # what it accepted, shown (and logged) again
    assert [r["state"] for r in await my_reorders(client, customer)] == ["accepted"]

    fulfilled = await set_status(client, api_key, pulled["id"], "fulfilled")
    assert fulfilled.status_code == 200, fulfilled.text
    assert fulfilled.json()["state"] == "fulfilled"

    [seen] = await my_reorders(client, customer)
    assert seen["id"] == placed_reorder["id"]
    assert seen["state"] == "fulfilled"
    assert seen["item"] == placed_reorder["item"]

    # The access log names the tailor, what it saw and why.
    entries = [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"]
    assert entries, "the partner's read of the reorder is not in the access log"
    for entry in entries:
        assert entry["who"]["partner_id"] == str(partner.partner_id)
        assert entry["who"]["name"] == partner.name
        assert entry["fields"] == ["product", "attributes"]
        assert entry["preferences"] == [{"id": chinos["id"], "name": "Classic Chino"}]
        assert partner.name in entry["summary"]
    # the feed's read, and the acceptance's answer, which shows the item again; the fulfilment
    # shows nothing
    assert [e["purpose"] for e in entries] == ["reorder", "reorder"]


async def test_editing_a_preference_after_reordering_does_not_change_the_reorder(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(
        client, customer, f"partner:{partner.partner_id}", ["product", "attributes", "note"]
    )
    placed = await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
    assert placed.status_code == 201, placed.text
    from_store = await reorder(client, customer, chinos["id"], FROM_HIGH_STREET)
    assert from_store.status_code == 201, from_store.text

    edited = await client.patch(
        f"/v1/me/preferences/{chinos['id']}",
        headers={**customer.headers, "If-Match": f'"{chinos["version"]}"'},
        json={
            "product": {"sku": "CL-CHINO-NEW", "name": "Chino Mk II"},
            "attributes": {"waist": "36", "leg": "32"},
            "note": "the new cut is fine",
            "status": "available",
        },
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["product"]["name"] == "Chino Mk II"

    as_placed = {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
        "note": CHINOS["note"],
    }
    reorders = {r["id"]: r for r in await my_reorders(client, customer)}
    assert reorders[placed.json()["id"]]["item"] == as_placed
    # the store's snapshot: product and sizes as placed (the note only when the customer adds it)
    assert reorders[from_store.json()["id"]]["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
    }
    items, _ = await pull(client, api_key)
    assert [(item["id"], item["item"]) for item in items] == [(placed.json()["id"], as_placed)]


async def test_reordering_through_a_partner_without_consent_is_a_conflict_that_says_so(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)

    refused = await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith(PROBLEM_JSON)
    assert "consent" in refused.json()["detail"].lower() or "let it see" in refused.json()["detail"]
    assert f"partner:{partner.partner_id}" in refused.json()["detail"]
    assert await my_reorders(client, customer) == []
    assert (await feed_page(client, api_key))["items"] == []


async def test_a_grant_for_other_preferences_does_not_allow_reordering_this_one(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, _ = await partner_key(conn)
    chinos = await keep(client, customer)
    shirt = await keep(client, customer, {"product": {"sku": "OX-1", "name": "Oxford Shirt"}})
    await grant(
        client, customer, f"partner:{partner.partner_id}", ["product"], preferences=[shirt["id"]]
    )

    assert (
        await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
    ).status_code == 409
    allowed = await reorder(client, customer, shirt["id"], f"partner:{partner.partner_id}")
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["item"] == {
        "product": {"sku": "OX-1", "name": "Oxford Shirt", "brand": None, "category": None}
    }


async def test_reordering_through_an_unknown_partner_or_preference_is_not_found(
    client, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer)

    unknown_partner = await reorder(client, customer, chinos["id"], f"partner:{uuid.uuid4()}")
    assert unknown_partner.status_code == 404
    assert unknown_partner.headers["content-type"].startswith(PROBLEM_JSON)
    unknown_preference = await reorder(client, customer, str(uuid.uuid4()), FROM_HIGH_STREET)
    assert unknown_preference.status_code == 404

    someone_else = await new_customer()
    not_theirs = await reorder(client, someone_else, chinos["id"], FROM_HIGH_STREET)
    assert not_theirs.status_code == 404
    assert await my_reorders(client, customer) == []


async def test_reordering_from_a_store_keeps_product_and_sizes_and_the_note_if_asked(
    client, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer)

    placed = await reorder(client, customer, chinos["id"], FROM_HIGH_STREET, quantity=3)
    assert placed.status_code == 201, placed.text
    body = placed.json()
    assert body["fulfiller"] == FROM_HIGH_STREET
    assert body["state"] == "requested"
    assert body["quantity"] == 3
    assert body["item"] == {"product": CHINOS["product"], "attributes": CHINOS["attributes"]}
    with_note = await client.post(
        f"/v1/me/preferences/{chinos['id']}/reorders",
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET, "fields": ["product", "note"]},
    )
    assert with_note.json()["item"] == {"product": CHINOS["product"], "note": CHINOS["note"]}
    assert [r["id"] for r in await my_reorders(client, customer)] == [
        with_note.json()["id"],
        body["id"],
    ]


async def test_bad_reorder_requests_are_refused_at_the_edge(client, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer)
    for body in (
        {"quantity": 0},
        {"quantity": 100},
        {"quantity": 1, "fulfiller": "partner:tailor"},
        {"quantity": 1, "fulfiller": "courier"},
        {"quantity": 1, "colour": "red"},
    ):
        response = await client.post(
            f"/v1/me/preferences/{chinos['id']}/reorders",
            headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
            json=body,
        )
        assert response.status_code == 400, (body, response.text)
        assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert await my_reorders(client, customer) == []


async def test_customer_can_cancel_a_reorder_until_it_is_accepted(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    first = (await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")).json()
    second = (await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")).json()

    cancelled = await client.post(f"/v1/me/reorders/{first['id']}/cancel", headers=customer.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    again = await client.post(f"/v1/me/reorders/{first['id']}/cancel", headers=customer.headers)
    assert again.status_code == 200
    assert again.json()["state"] == "cancelled"

    assert (await set_status(client, api_key, second["id"], "accepted")).status_code == 200
    too_late = await client.post(f"/v1/me/reorders/{second['id']}/cancel", headers=customer.headers)
    assert too_late.status_code == 409
    assert too_late.headers["content-type"].startswith(PROBLEM_JSON)
    assert "accepted" in too_late.json()["detail"]

    # A cancelled reorder cannot be picked up by the partner afterwards.
    assert (await set_status(client, api_key, first["id"], "accepted")).status_code == 409
    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states == {first["id"]: "cancelled", second["id"]: "accepted"}

    someone_else = await new_customer()
    assert (
        await client.post(f"/v1/me/reorders/{second['id']}/cancel", headers=someone_else.headers)
    ).status_code == 404


async def test_partner_status_changes_follow_the_allowed_transitions(client, conn, new_customer):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product", "attributes"])

    async def placed() -> str:
        response = await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
        assert response.status_code == 201, response.text
        reorder_id: str = response.json()["id"]
        return reorder_id

    async def move(reorder_id: str, state: str, expected: int) -> None:
        response = await set_status(client, api_key, reorder_id, state)
        assert response.status_code == expected, (state, response.text)
        if expected == 409:
            assert response.headers["content-type"].startswith(PROBLEM_JSON)

    finished = await placed()
    await move(finished, "fulfilled", 409)  # requested → fulfilled skips acceptance
    await move(finished, "accepted", 200)
    await move(finished, "accepted", 200)  # repeating the current state is a no-op
    await move(finished, "fulfilled", 200)
    before = (await my_reorders(client, customer))[0]
    await move(finished, "fulfilled", 200)
    assert (await my_reorders(client, customer))[0] == before  # not even updated_at moved
    await move(finished, "declined", 409)  # fulfilled → declined
    await move(finished, "accepted", 409)

    declined_early = await placed()
    await move(declined_early, "declined", 200)
    await move(declined_early, "declined", 200)
    await move(declined_early, "accepted", 409)

    declined_late = await placed()
    await move(declined_late, "accepted", 200)
    await move(declined_late, "declined", 200)
    await move(declined_late, "fulfilled", 409)

    invalid = await set_status(client, api_key, declined_late, "cancelled")
    assert invalid.status_code == 400
    assert (await set_status(client, api_key, str(uuid.uuid4()), "accepted")).status_code == 404

    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert states == {finished: "fulfilled", declined_early: "declined", declined_late: "declined"}


async def test_a_partner_cannot_move_another_partners_reorder(client, conn, new_customer):
    customer = await new_customer()
    tailor, _ = await partner_key(conn)
    _, other_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{tailor.partner_id}", ["product"])
    placed = (await reorder(client, customer, chinos["id"], f"partner:{tailor.partner_id}")).json()
    store_reorder = (await reorder(client, customer, chinos["id"], FROM_HIGH_STREET)).json()

    for reorder_id in (placed["id"], store_reorder["id"]):
        response = await set_status(client, other_key, reorder_id, "accepted")
        assert response.status_code == 404
    assert {r["state"] for r in await my_reorders(client, customer)} == {"requested"}


async def test_the_customers_reorders_are_listed_newest_first_in_pages(client, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer)
    placed = []
    for _ in range(5):
        response = await reorder(client, customer, chinos["id"], FROM_HIGH_STREET)
        assert response.status_code == 201
        placed.append(response.json()["id"])

    seen, after = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
        page = await client.get("/v1/me/reorders", headers=customer.headers, params=params)
        assert page.status_code == 200, page.text
        seen.extend(r["id"] for r in page.json()["items"])
        after = page.json()["next"]
        if after is None:
            break
    assert seen == list(reversed(placed))


async def test_partner_submitted_reorders_are_in_the_customers_list_and_log(
    client, conn, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product", "attributes"])
    ref = await reference(client, customer, partner.partner_id)
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])
    response = await partner_reorder(client, api_key, ref, known, quantity=2)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["customer"] == ref
    assert body["origin"] == "partner"
    assert body["item"] == {"product": CHINOS["product"], "attributes": CHINOS["attributes"]}

    [mine] = await my_reorders(client, customer)
    assert mine["id"] == body["id"]
    assert mine["origin"] == "partner"
    assert mine["fulfiller"] == f"partner:{partner.partner_id}"
    [entry] = [e for e in await access_log(client, customer) if e["who"]["kind"] == "partner"]
    assert entry["who"]["partner_id"] == str(partner.partner_id)
    assert entry["fields"] == ["product", "attributes"]
    # It arrives in the partner's own feed too.
    items, _ = await pull(client, api_key)
    assert [item["id"] for item in items] == [body["id"]]


async def confirm(client: httpx.AsyncClient, customer: Any, reorder_id: str) -> httpx.Response:
    return await client.post(f"/v1/me/reorders/{reorder_id}/confirm", headers=customer.headers)


async def test_a_partners_reorder_waits_for_the_customers_confirmation(
    client, conn, new_customer, settings
):
    customer, stranger = await new_customer(), await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])

    proposed = await partner_reorder(client, api_key, ref, known)
    assert proposed.status_code == 201, proposed.text
    proposal = proposed.json()
    assert proposal["state"] == "proposed"
    # The partner cannot skip the customer's answer.
    refused = await set_status(client, api_key, proposal["id"], "accepted")
    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith(PROBLEM_JSON)
    [mine] = await my_reorders(client, customer)
    assert (mine["id"], mine["state"], mine["origin"]) == (proposal["id"], "proposed", "partner")

    # Nobody else can confirm it; the customer can, once.
    assert (await confirm(client, stranger, proposal["id"])).status_code == 404
    confirmed = await confirm(client, customer, proposal["id"])
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"] == "requested"
    assert (await confirm(client, customer, proposal["id"])).json()["state"] == "requested"
    assert (await set_status(client, api_key, proposal["id"], "accepted")).status_code == 200
    assert (await confirm(client, customer, proposal["id"])).status_code == 409

    # Declining is cancelling, and a declined proposal cannot be confirmed any more.
    other = (await partner_reorder(client, api_key, ref, known)).json()
    declined = await client.post(f"/v1/me/reorders/{other['id']}/cancel", headers=customer.headers)
    assert (declined.status_code, declined.json()["state"]) == (200, "cancelled")
    assert (await confirm(client, customer, other["id"])).status_code == 409
    assert (await set_status(client, api_key, other["id"], "accepted")).status_code == 409


async def test_a_partner_may_propose_only_a_few_small_reorders_at_a_time(
    client, conn, new_customer, settings
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])

    too_many = await partner_reorder(
        client, api_key, ref, known, quantity=settings.partner_proposal_max_quantity + 1
    )
    assert too_many.status_code == 409, too_many.text
    assert too_many.headers["content-type"].startswith(PROBLEM_JSON)
    placed = [
        await partner_reorder(
            client, api_key, ref, known, quantity=settings.partner_proposal_max_quantity
        )
        for _ in range(settings.partner_open_proposals)
    ]
    assert [p.status_code for p in placed] == [201] * settings.partner_open_proposals
    one_more = await partner_reorder(client, api_key, ref, known)
    assert one_more.status_code == 409, one_more.text
    assert one_more.headers["content-type"].startswith(PROBLEM_JSON)
    assert len(await my_reorders(client, customer)) == settings.partner_open_proposals

    # Withdrawing its own proposal does not make room: that one counts for a day.
    withdrawn = await client.post(
        f"/v1/partner/reorders/{placed[1].json()['id']}/status",
        headers=bearer(api_key),
        json={"state": "declined"},
    )
    assert withdrawn.status_code == 200, withdrawn.text
    assert (await partner_reorder(client, api_key, ref, known)).status_code == 409

    # Once the customer answers one, the partner may propose again.
    await client.post(f"/v1/me/reorders/{placed[0].json()['id']}/cancel", headers=customer.headers)
    assert (await partner_reorder(client, api_key, ref, known)).status_code == 201


async def test_simultaneous_proposals_never_exceed_the_limit(client, conn, new_customer, settings):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    chinos = await keep(client, customer)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    ref = await reference(client, customer, partner.partner_id)
    known = await known_as(conn, partner.partner_id, customer, chinos["id"])

    answers = await asyncio.gather(
        *(partner_reorder(client, api_key, ref, known) for _ in range(8))
    )

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * settings.partner_open_proposals + [409] * (
        8 - settings.partner_open_proposals
    ), [answer.text for answer in answers]
    assert len(await my_reorders(client, customer)) == settings.partner_open_proposals
