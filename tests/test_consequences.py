"""The table of consequences (prefs.consequences) and the expiry job: what a write causes
elsewhere happens in the writing transaction, and no read expires anything."""

from __future__ import annotations

import asyncio
import typing
import uuid
from datetime import UTC, datetime, timedelta

from prefs import consequences, events
from prefs.retention import service as retention
from tests.support.customer import grant, keep
from tests.support.partner import feed_page, partner_key, pull, reorder, set_status

LEDGER_ROWS = "SELECT count(*) FROM consent_ledger WHERE customer_id = $1"
STATE = "SELECT state FROM reorders WHERE reorder_id = $1"


def test_every_happening_has_a_row_in_the_table_for_every_audience():
    """A new kind of happening or audience cannot be forgotten: the table names each pair,
    even where nothing follows (an empty row says so on purpose)."""
    kinds = ["pos", "insights", "partner"]
    for happened in typing.get_args(events.Happened):
        if "audience" in happened.__dataclass_fields__:
            for kind in kinds:
                assert (happened, kind) in consequences.TABLE, (happened.__name__, kind)
        else:
            assert (happened, None) in consequences.TABLE, happened.__name__


async def test_reads_expire_nothing_and_the_expiry_job_ends_a_partner_grant(
    client, conn, vault, new_customer
):
    customer = await new_customer()
    partner, api_key = await partner_key(conn)
    preference = await keep(client, customer)
    ends = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    await grant(client, customer, f"partner:{partner.partner_id}", expires_at=ends)
    placed = await reorder(client, customer, preference["id"], f"partner:{partner.partner_id}")
    assert placed.status_code == 201, placed.text
    [seen], _ = await pull(client, api_key)
    assert seen["state"] == "requested"
    await asyncio.sleep(
        max(0.0, (datetime.fromisoformat(ends) - datetime.now(UTC)).total_seconds()) + 0.3
    )

    customer_id = uuid.UUID(customer.id)
    ledger_before = await conn.fetchval(LEDGER_ROWS, customer_id)
    # From the expiry instant the partner sees the waiting reorder as cancelled and cannot take it,
    # though the expiry job has not run: reads and refusals write nothing.
    page = await feed_page(client, api_key)
    assert page["items"] == [] or page["items"][0]["state"] == "cancelled"
    refused = await set_status(client, api_key, seen["id"], "accepted")
    assert refused.status_code == 409, refused.text
    for path in ("/v1/me/consents", "/v1/me/consents/history", "/v1/me/reorders"):
        assert (await client.get(path, headers=customer.headers)).status_code == 200
    assert await conn.fetchval(LEDGER_ROWS, customer_id) == ledger_before
    assert await conn.fetchval(STATE, uuid.UUID(seen["id"])) == "requested"

    # The job records the expiry and applies its consequence in the same transaction.
    assert await retention.expire(conn, vault, "prefs") >= 1
    assert await conn.fetchval(LEDGER_ROWS, customer_id) == ledger_before + 1
    assert await conn.fetchval(STATE, uuid.UUID(seen["id"])) == "cancelled"
    history = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    assert history["items"][0]["receipt"]["state"] == "ConsentExpired"


async def test_a_preference_write_counts_demand_only_under_an_insights_grant(
    client, conn, vault, new_customer
):
    customer = await new_customer()
    pseudonyms = vault.index.all_digests("demand", uuid.UUID(customer.id).bytes)
    contributions = "SELECT count(*) FROM demand_contributions WHERE pseudonym = ANY($1::bytea[])"
    discontinued = {
        "product": {"sku": "CH-34", "name": "Classic chinos"},
        "attributes": {"waist": "34"},
        "status": "discontinued",
    }
    await keep(client, customer, discontinued)
    assert await conn.fetchval(contributions, pseudonyms) == 0
    await grant(client, customer, "insights", fields=["product", "attributes"])
    assert await conn.fetchval(contributions, pseudonyms) == 1
    await keep(client, customer, {**discontinued, "product": {"sku": "CH-36", "name": "Classic"}})
    assert await conn.fetchval(contributions, pseudonyms) == 2
    response = await client.delete("/v1/me/consents/insights", headers=customer.headers)
    assert response.status_code == 200, response.text
    assert await conn.fetchval(contributions, pseudonyms) == 0
    await keep(client, customer, {**discontinued, "product": {"sku": "CH-38", "name": "Classic"}})
    assert await conn.fetchval(contributions, pseudonyms) == 0
