"""The access log at rest: what identifies a visit (which store and till, which credential, which
preferences and fields, purpose, via) is sealed under the customer's data key; only customer_id,
at and disclosure_id stay in clear. Entries written before sealing are sealed by a backfill."""

from __future__ import annotations

import secrets
import uuid

from prefs.access_log import service as access_log
from tests.support.customer import CHINOS, bearer, grant, keep_all
from tests.support.rights import partner, reference, run_prefs
from tests.support.till import SHIRT, fresh_card, look_up, till_key
from tests.test_privacy_at_rest import copy_block, encodings, pg_dump


async def access_log_page(client, customer) -> list[dict]:
    response = await client.get("/v1/me/access-log", headers=customer.headers)
    assert response.status_code == 200, response.text
    items: list[dict] = response.json()["items"]
    return items


async def test_a_dump_of_the_access_log_holds_no_store_till_credential_or_preference(
    client, conn, database, new_customer
):
    tag = secrets.token_hex(4).upper()
    store = f"Store{tag}Marker"
    till_name = f"Till{tag}Name"
    card = fresh_card()
    customer = await new_customer(card=card)
    kept = await keep_all(client, customer, CHINOS, SHIRT)
    await grant(client, customer)
    cred, key = await till_key(conn, store=store, name=till_name)
    tailor, tailor_key = await partner(conn)
    await grant(client, customer, f"partner:{tailor.partner_id}", preferences="all")
    for _ in range(2):
        assert (await look_up(client, key, card=card)).status_code == 200
    ref = await reference(client, customer, tailor.partner_id)
    read = await client.get(f"/v1/partner/customers/{ref}/preferences", headers=bearer(tailor_key))
    assert read.status_code == 200, read.text

    rows = [row for row in copy_block(pg_dump(database.url), "access_log") if customer.id in row]
    assert len(rows) == 3  # the dump holds this customer's entries
    dumped = "\n".join(rows)
    markers = {
        "store": store,
        "till name": till_name,
        "credential id": str(cred.id),
        "partner credential id": str(tailor.id),
        "partner id": str(tailor.partner_id),
        "partner name": tailor.name,
        **{f"preference id {n}": p["id"] for n, p in enumerate(kept)},
    }
    for what, value in markers.items():
        forms = encodings(value) | ({uuid.UUID(value).hex} if " id" in what else set())
        for form in forms:
            assert form not in dumped, f"the {what} is in the access log as {form!r}"
    for word in ("checkout", "partner-read", "card", "reference", "attributes", "note"):
        assert word not in dumped, f"{word!r} is in the access log in clear"

    # the customer still reads every entry, in full
    log = await access_log_page(client, customer)
    tills = [e for e in log if e["who"]["kind"] == "pos"]
    assert len(tills) == 2
    for entry in tills:
        assert entry["who"] == {
            "kind": "pos",
            "id": str(cred.id),
            "name": till_name,
            "store": store,
            "store_name": f"Store {store}",  # its name in the directory
            "partner_id": None,
        }
        assert (entry["purpose"], entry["via"]) == ("checkout", "card")
        assert entry["fields"] == ["product", "attributes", "note"]
        assert [p["id"] for p in entry["preferences"]] == [p["id"] for p in kept]
        assert entry["summary"].startswith(f"{till_name} at Store {store} saw ")
    [by_partner] = [e for e in log if e["who"]["kind"] == "partner"]
    assert by_partner["who"]["partner_id"] == str(tailor.partner_id)
    assert (by_partner["purpose"], by_partner["via"]) == ("partner-read", "reference")


LEGACY = """
INSERT INTO access_log (customer_id, disclosure_id, at, actor_kind, credential_id, actor_name,
                        store, partner_id, purpose, via, preference_ids, fields)
VALUES ($1, $2, now() - interval '1 day', 'pos', $3, $4, $5, NULL, 'checkout', 'card', $6,
        '{product}')
"""


async def test_entries_written_in_clear_are_read_and_then_sealed_by_the_backfill(
    client, conn, vault, new_customer
):
    customer = await new_customer(card=fresh_card())
    kept = await keep_all(client, customer, CHINOS)
    cred, _ = await till_key(conn, name="Till 9")
    legacy_id = uuid.uuid4()
    await conn.execute(
        LEGACY,
        uuid.UUID(customer.id),
        legacy_id,
        cred.id,
        cred.name,
        cred.store,
        [uuid.UUID(kept[0]["id"])],
    )
    before = await access_log_page(client, customer)  # read while still in clear

    assert sum([n async for n in access_log.seal_backlog(conn, vault, batch=1)]) >= 1

    row = await conn.fetchrow(
        "SELECT * FROM access_log WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert row["sealed"] is not None
    kept_in_clear = ("customer_id", "disclosure_id", "at", "sealed")
    plain = {k: v for k, v in dict(row).items() if k not in kept_in_clear}
    assert plain and all(v is None for v in plain.values()), plain
    after = await access_log_page(client, customer)
    assert after == before
    [entry] = after
    assert entry["id"] == str(legacy_id)
    assert entry["who"]["name"] == "Till 9" and entry["who"]["store"] == cred.store
    assert [p["id"] for p in entry["preferences"]] == [kept[0]["id"]]
    # nothing left: safe to run again
    assert [n async for n in access_log.seal_backlog(conn, vault, batch=100)] == []


async def test_prefs_migrate_seals_the_entries_kept_in_clear(
    client, conn, database, settings, new_customer
):
    customer = await new_customer(card=fresh_card())
    kept = await keep_all(client, customer, CHINOS)
    cred, _ = await till_key(conn)
    legacy_id = uuid.uuid4()
    await conn.execute(
        LEGACY,
        uuid.UUID(customer.id),
        legacy_id,
        cred.id,
        cred.name,
        cred.store,
        [uuid.UUID(kept[0]["id"])],
    )

    code, output = await run_prefs(
        "migrate",
        database_url=database.url,
        data_dir=settings.data_dir,
        master_keys=settings.master_keys,
        index_keys=settings.index_keys,
    )

    assert code == 0, output
    assert "sealed" in output and "access-log entries" in output
    row = await conn.fetchrow("SELECT * FROM access_log WHERE disclosure_id = $1", legacy_id)
    assert row["sealed"] is not None and row["store"] is None and row["credential_id"] is None
    [entry] = await access_log_page(client, customer)
    assert entry["who"]["store"] == cred.store and entry["who"]["id"] == str(cred.id)
