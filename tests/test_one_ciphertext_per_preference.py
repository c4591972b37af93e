"""One ciphertext per preference (revision 0016): what a preference says is sealed whole, bound
to its row; rows written field by field before it read the same until the backfill converts
them, and every audience still sees exactly the fields it was granted. 0016 is an expand step:
every write keeps the per-field copy the previous release reads, and when that release rewrites
the fields, the stale whole is dropped."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from prefs.crypto import DataKey, DecryptionError, Vault
from prefs.customer_keys import data_key
from prefs.preferences import service as preferences
from prefs.products import Product, Source
from prefs.sealed_preferences import (
    NO_SKU,
    Content,
    _Stored,
    _StoredProduct,
    decrypt_attributes,
    decrypt_note,
    decrypt_product,
    open_sealed,
    seal,
)
from tests.support.customer import grant, preferences_of
from tests.support.rights import run_prefs
from tests.support.till import look_up, shopper, till_key

CONTENT = "SELECT sealed, product_ct, attributes_ct, note_ct, source_ct, version, updated_at"


async def stored(conn: asyncpg.Connection, pid: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(f"{CONTENT} FROM preferences WHERE preference_id = $1", pid)
    assert row is not None
    return row


async def as_before_0016(conn: asyncpg.Connection, key: DataKey, pid: uuid.UUID) -> None:
    """Rewrite a preference as revisions before 0016 wrote it: one ciphertext per field."""
    content = open_sealed(key, pid, (await stored(conn, pid))["sealed"])

    def field(column: str, value: Any) -> bytes:
        return key.encrypt(msgspec.json.encode(value), "preferences", column, pid)

    await conn.execute(
        "UPDATE preferences SET sealed = NULL, product_ct = $2, attributes_ct = $3, note_ct = $4"
        " WHERE preference_id = $1",
        pid,
        field("product", content.product),
        field("attributes", content.attributes),
        None if content.note is None else field("note", content.note),
    )


async def everything_shown(
    client: httpx.AsyncClient, customer: Any, till: str, card: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The customer's own page, their export's preferences and what a till is shown."""
    answer = await look_up(client, till, card=card)
    assert answer.status_code == 200, answer.text
    export = await client.get("/v1/me/export", headers=customer.headers)
    assert export.status_code == 200, export.text
    return (
        await preferences_of(client, customer),
        export.json()["preferences"],
        answer.json()["preferences"],
    )


async def test_a_preference_is_one_ciphertext_that_opens_only_where_it_lives(
    client, conn, new_customer, vault: Vault
):
    customer, _, kept = await shopper(new_customer, client)
    key = await data_key(conn, vault, uuid.UUID(customer.id))
    first, second = (uuid.UUID(p["id"]) for p in kept[:2])
    row = await stored(conn, first)
    assert row["sealed"] is not None
    whole = open_sealed(key, first, row["sealed"])
    assert whole.product.sku == kept[0]["product"]["sku"]
    # the per-field copy the previous release reads says the same
    assert decrypt_product(key, first, row["product_ct"]) == whole.product
    assert decrypt_attributes(key, first, row["attributes_ct"]) == whole.attributes
    assert decrypt_note(key, first, row["note_ct"]) == whole.note
    for table, column, row_id in [
        ("preferences", "sealed", second),  # another preference's row
        ("preferences", "product", first),  # another column
        ("reorders", "sealed", first),  # another table
    ]:
        with pytest.raises(DecryptionError):
            key.decrypt(row["sealed"], table, column, row_id)


async def test_rows_kept_field_by_field_read_the_same_before_and_after_the_backfill(
    client, conn, new_customer, vault: Vault
):
    customer, card, kept = await shopper(new_customer, client)
    await grant(client, customer, fields=["product", "note"])  # no attributes at the till
    _, till = await till_key(conn)
    before = await everything_shown(client, customer, till, card)
    page, _, at_till = before
    assert [p["product"]["sku"] for p in at_till] == [p["product"]["sku"] for p in page]
    assert all("attributes" not in p and "note" in p for p in at_till)

    key = await data_key(conn, vault, uuid.UUID(customer.id))
    legacy = [uuid.UUID(p["id"]) for p in kept[1:]]  # the first stays sealed: a mixed locker
    for pid in legacy:
        await as_before_0016(conn, key, pid)
    unconverted = {pid: await stored(conn, pid) for pid in legacy}
    assert await everything_shown(client, customer, till, card) == before

    assert sum([n async for n in preferences.seal_content_backlog(conn, vault, batch=2)]) >= 2
    for pid in legacy:
        row = await stored(conn, pid)
        assert row["sealed"] is not None
        # the fields stay for the previous release's readers, the same ciphertexts
        assert [row[c] for c in ("product_ct", "attributes_ct", "note_ct")] == [
            unconverted[pid][c] for c in ("product_ct", "attributes_ct", "note_ct")
        ]
        # what it says did not change, so neither do its version and time of change
        assert (row["version"], row["updated_at"]) == (
            unconverted[pid]["version"],
            unconverted[pid]["updated_at"],
        )
    assert await everything_shown(client, customer, till, card) == before
    assert [n async for n in preferences.seal_content_backlog(conn, vault)] == []


async def test_editing_a_row_kept_field_by_field_seals_it_whole_and_keeps_the_rest(
    client, conn, new_customer, vault: Vault
):
    customer, _, kept = await shopper(new_customer, client)
    boots = kept[2]
    pid = uuid.UUID(boots["id"])
    await as_before_0016(conn, await data_key(conn, vault, uuid.UUID(customer.id)), pid)

    edited = await client.patch(
        f"/v1/me/preferences/{pid}",
        headers={**customer.headers, "If-Match": "*"},
        json={"note": "Whole sizes only."},
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["note"] == "Whole sizes only."
    assert (edited.json()["product"], edited.json()["attributes"]) == (
        boots["product"],
        boots["attributes"],
    )
    row = await stored(conn, pid)
    key = await data_key(conn, vault, uuid.UUID(customer.id))
    assert open_sealed(key, pid, row["sealed"]).note == "Whole sizes only."
    assert decrypt_note(key, pid, row["note_ct"]) == "Whole sizes only."


async def test_prefs_migrate_seals_the_preferences_kept_field_by_field(
    client, conn, database, settings, new_customer, vault: Vault
):
    customer, _, kept = await shopper(new_customer, client)
    key = await data_key(conn, vault, uuid.UUID(customer.id))
    for preference in kept:
        await as_before_0016(conn, key, uuid.UUID(preference["id"]))
    before = await preferences_of(client, customer)

    code, output = await run_prefs(
        "migrate",
        database_url=database.url,
        data_dir=settings.data_dir,
        master_keys=settings.master_keys,
        index_keys=settings.index_keys,
    )

    assert code == 0, output
    assert "preferences kept field by field as one ciphertext each" in output
    for preference in kept:
        row = await stored(conn, uuid.UUID(preference["id"]))
        assert row["sealed"] is not None and row["product_ct"] is not None
    assert await preferences_of(client, customer) == before


async def test_the_previous_release_rewriting_the_fields_drops_the_stale_whole(
    client, conn, new_customer, vault: Vault
):
    """The previous release knows only the fields: when it rewrites them, the trigger empties
    sealed, so this release reads the fields it wrote (not what was sealed before)."""
    customer, _, kept = await shopper(new_customer, client)
    pid = uuid.UUID(kept[0]["id"])
    key = await data_key(conn, vault, uuid.UUID(customer.id))
    rewritten = key.encrypt(
        msgspec.json.encode("Written by the old release."), "preferences", "note", pid
    )
    await conn.execute(
        "UPDATE preferences SET note_ct = $2 WHERE preference_id = $1", pid, rewritten
    )
    assert (await stored(conn, pid))["sealed"] is None
    [mine] = [p for p in await preferences_of(client, customer) if p["id"] == str(pid)]
    assert mine["note"] == "Written by the old release."
    assert sum([n async for n in preferences.seal_content_backlog(conn, vault)]) >= 1
    assert open_sealed(key, pid, (await stored(conn, pid))["sealed"]).note == (
        "Written by the old release."
    )
    # a write of this release changes both, and keeps what it sealed
    await conn.execute("UPDATE preferences SET rank = rank WHERE preference_id = $1", pid)
    assert (await stored(conn, pid))["sealed"] is not None


async def test_a_product_without_a_sku_reaches_the_previous_release_with_a_placeholder(
    client, conn, new_customer, vault: Vault
):
    customer = await new_customer()
    made = await client.post(
        "/v1/me/preferences",
        headers=customer.headers,
        json={"product": {"name": "The old blue cardigan"}, "attributes": {"size": "M"}},
    )
    assert made.status_code == 201, made.text
    pid = uuid.UUID(made.json()["id"])
    key = await data_key(conn, vault, uuid.UUID(customer.id))
    row = await stored(conn, pid)
    # the previous release's product must have a SKU; it reads the placeholder
    copy = msgspec.json.decode(key.decrypt(row["product_ct"], "preferences", "product", pid))
    assert copy["sku"] == NO_SKU
    # and this release reads it back as none, from either format
    assert decrypt_product(key, pid, row["product_ct"]).sku is None
    await conn.execute("UPDATE preferences SET sealed = NULL WHERE preference_id = $1", pid)
    [mine] = await preferences_of(client, customer)
    assert mine["product"]["sku"] is None


def test_a_preference_is_read_back_into_the_shapes_it_was_sealed_from():
    """Opening reads the sealed content into unchecked mirrors of Content and Product (the checks
    ran when it was written). A field added to either must be added to its mirror, or it would
    be dropped, or refused, on the way back."""
    assert _Stored.__struct_fields__ == Content.__struct_fields__
    assert _StoredProduct.__struct_fields__ == Product.__struct_fields__
    assert _StoredProduct.__struct_defaults__ == Product.__struct_defaults__
    key = DataKey(uuid.uuid4(), 1, bytes(range(32)))
    preference_id = uuid.uuid4()
    content = Content(
        product=Product(sku="CH-34", name="Classic Chino", brand="Acme", category="trousers"),
        attributes={"waist": "34", "leg": "34"},
        note="the old cut",
        source=Source(kind="till", store="0421", purchased_on=date(2026, 11, 30)),
    )
    opened = open_sealed(key, preference_id, seal(key, preference_id, content))
    assert opened == content
    assert type(opened.product) is Product
