"""The one place a reorder's snapshot is sealed and opened, and a reorder row written.

Customers place reorders (prefs.reorders) and partners propose them (prefs.partners); both
write the same row, with an encrypted snapshot of exactly what was disclosed when it was
placed, and both read it back through here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import asyncpg
import msgspec
from msgspec import UNSET, Meta, UnsetType

from prefs.crypto import DataKey, Vault
from prefs.db import Row
from prefs.products import Product
from prefs.sealed_preferences import open_content

Quantity = Annotated[int, Meta(ge=1, le=99)]
State = Literal[
    "proposed", "requested", "accepted", "ready", "collected", "fulfilled", "declined", "cancelled"
]


class Snapshot(msgspec.Struct, kw_only=True):
    """What was disclosed when the reorder was placed; later edits do not change it."""

    product: Product | UnsetType = UNSET
    attributes: dict[str, str] | UnsetType = UNSET
    note: str | None | UnsetType = UNSET


_snapshot = msgspec.json.Decoder(Snapshot)


def snapshot_of(key: DataKey, row: Row, fields: list[str]) -> Snapshot:
    """The granted fields of a preference row (a query selecting its content, all of it)."""
    content = open_content(key, row)
    snap = Snapshot()
    if "product" in fields:
        snap.product = content.product
    if "attributes" in fields:
        snap.attributes = content.attributes
    if "note" in fields:
        snap.note = content.note
    return snap


INSERT = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, partner_id, origin,
                      quantity, state, fields, snapshot_ct, preference_ref, store_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $11, $8, $9, $10, $12)
RETURNING reorder_id, preference_id, preference_ref, fulfiller, store_id, origin, quantity, state,
          fields, snapshot_ct, created_at, updated_at
"""


async def insert(
    conn: asyncpg.Connection,
    key: DataKey,
    preference: Row,
    fulfiller: str,
    partner_id: uuid.UUID | None,
    origin: str,
    quantity: int,
    fields: list[str],
    preference_ref: uuid.UUID | None = None,
    state: str = "requested",
    store_id: str | None = None,
) -> tuple[Row, Snapshot]:
    reorder_id = uuid.uuid4()
    snap = snapshot_of(key, preference, fields)
    sealed = key.encrypt(msgspec.json.encode(snap), "reorders", "snapshot", reorder_id)
    row = await conn.fetchrow(
        INSERT,
        key.customer_id,
        reorder_id,
        preference["preference_id"],
        fulfiller,
        partner_id,
        origin,
        quantity,
        fields,
        sealed,
        preference_ref,
        state,
        store_id,
    )
    assert row is not None
    return row, snap


def row_key(vault: Vault, keys: dict[uuid.UUID, DataKey], row: Row) -> DataKey:
    """The data key of the row's customer (its ``customer_id``, ``generation`` and ``wrapped``),
    unwrapped once per customer into ``keys`` for the rest of a page and its access-log records."""
    customer_id = row["customer_id"]
    key = keys.get(customer_id)
    if key is None:
        key = keys[customer_id] = vault.envelope.unwrap(
            customer_id, row["generation"], row["wrapped"]
        )
    return key


def open_snapshot(key: DataKey | None, row: Row) -> Snapshot | None:
    if key is None or row["snapshot_ct"] is None:
        return None
    return _snapshot.decode(
        key.decrypt(row["snapshot_ct"], "reorders", "snapshot", row["reorder_id"])
    )


def narrowed(snap: Snapshot | None, fields: list[str]) -> Snapshot | None:
    """The snapshot with only ``fields``; None when nothing is left to show."""
    if snap is None or not fields:
        return None
    return Snapshot(
        product=snap.product if "product" in fields else UNSET,
        attributes=snap.attributes if "attributes" in fields else UNSET,
        note=snap.note if "note" in fields else UNSET,
    )
