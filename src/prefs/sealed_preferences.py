"""The one place preference fields are sealed and opened, and shown to an audience."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from typing import NamedTuple

import msgspec

from prefs.crypto import NONCE_AT, NONCE_BYTES, BlindIndex, DataKey, nonce_of
from prefs.db import Row
from prefs.product_status import overlaid
from prefs.products import Product, SharedPreference, Source, Status

TABLE = "preferences"
# What a preference says: one ciphertext (sealed, revision 0016), or for rows written before it
# and not yet converted by the backfill, one ciphertext per field.
# Where a row has sealed, the per-field copy (kept for the previous release) is not read.
CONTENT = ", ".join(
    ["sealed"]
    + [
        f"CASE WHEN sealed IS NULL THEN {column} END AS {column}"
        for column in ("product_ct", "attributes_ct", "note_ct", "source_ct")
    ]
)
# A preference row with everything its owner may read; purchases and last_purchased_on are read
# only for rows not yet sealed (purchases_ct) by the backfill.
COLUMNS = f"""preference_id, rank, status, purchases, last_purchased_on, purchases_ct, version,
             {CONTENT}, created_at, updated_at"""
GET = f"SELECT {COLUMNS} FROM preferences WHERE customer_id = $1 AND preference_id = $2"
_attributes = msgspec.json.Decoder(dict[str, str])
_product = msgspec.json.Decoder(Product)
_source = msgspec.json.Decoder(Source)


class Content(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """What a preference says, sealed as one ciphertext (``sealed``): one AES-GCM open per
    preference instead of one per field. ``source``: where a till-added preference came from
    (None: its customer typed it)."""

    product: Product
    attributes: dict[str, str]
    note: str | None = None
    source: Source | None = None


_encoder = msgspec.msgpack.Encoder()


class _StoredProduct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Product's fields, read back without Product's checks (a pattern per string: two thirds of
    opening a preference): what was sealed passed them when it was written, and the ciphertext
    proves it is what was written. tests/test_one_ciphertext_per_preference.py keeps the two in
    step."""

    sku: str | None = None
    name: str
    brand: str | None = None
    category: str | None = None


class _Stored(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """Content as sealed, read with _StoredProduct."""

    product: _StoredProduct
    attributes: dict[str, str]
    note: str | None = None
    source: Source | None = None


_stored = msgspec.msgpack.Decoder(_Stored)


def seal(key: DataKey, preference_id: uuid.UUID, content: Content) -> bytes:
    """A preference's content as one ciphertext, bound to its customer, row and column."""
    return key.encrypt(_encoder.encode(content), TABLE, "sealed", preference_id)


# Revision 0016 is an expand step: while the previous release may still serve, every write keeps
# the per-field ciphertexts beside the one ciphertext, so its readers find what they read (a
# trigger empties ``sealed`` when the previous release rewrites the fields, and readers fall back
# to them). A product without a SKU is new in this release; the previous one's per-field product
# must have one, so the copy carries NO_SKU, which this release reads back as None.
NO_SKU = "-"


# The SKU index (revision 0018) names the ciphertext it was made from by its nonce
# (``sku_index_of``; SEALED_NONCE is crypto.nonce_of in SQL): a row the previous release
# rewrote, or one written before the index, is not indexed until the backfill indexes it, and
# SQL sees which rows those are.
SEALED_NONCE = f"substring(p.sealed FROM {NONCE_AT + 1} FOR {NONCE_BYTES})"
UNINDEXED = f"(p.sku_index IS NULL OR p.sku_index_of IS DISTINCT FROM {SEALED_NONCE})"


class Written(NamedTuple):
    """A preference's content as written: ``sealed``, the per-field copy, and the SKU's index
    (in the order of the columns ``sealed, product_ct, attributes_ct, note_ct, source_ct,
    sku_index, sku_index_of``)."""

    sealed: bytes
    product_ct: bytes
    attributes_ct: bytes
    note_ct: bytes | None
    source_ct: bytes | None
    sku_index: bytes
    sku_index_of: bytes


def _field(key: DataKey, preference_id: uuid.UUID, column: str, value: object) -> bytes:
    return key.encrypt(msgspec.json.encode(value), TABLE, column, preference_id)


def written(key: DataKey, index: BlindIndex, preference_id: uuid.UUID, content: Content) -> Written:
    """``content`` sealed as one ciphertext, with the per-field copy the previous release reads
    and the SKU's keyed index (by which an import finds the preferences of the SKUs it moved)."""
    product = content.product
    if product.sku is None:
        product = msgspec.structs.replace(product, sku=NO_SKU)
    sealed = seal(key, preference_id, content)
    return Written(
        sealed=sealed,
        product_ct=_field(key, preference_id, "product", product),
        attributes_ct=_field(key, preference_id, "attributes", content.attributes),
        note_ct=None if content.note is None else _field(key, preference_id, "note", content.note),
        source_ct=None
        if content.source is None
        else _field(key, preference_id, "source", content.source),
        sku_index=index.sku(content.product.sku, preference_id),
        sku_index_of=nonce_of(sealed),
    )


def open_sealed(key: DataKey, preference_id: uuid.UUID, blob: bytes) -> Content:
    stored = _stored.decode(key.decrypt(blob, TABLE, "sealed", preference_id))
    product = stored.product
    return Content(
        product=Product(
            sku=product.sku, name=product.name, brand=product.brand, category=product.category
        ),
        attributes=stored.attributes,
        note=stored.note,
        source=stored.source,
    )


def open_content(key: DataKey, row: Row) -> Content:
    """A preference row's content (a query selecting :data:`CONTENT`): sealed, or, for rows
    written before revision 0016 until the backfill converts them, field by field."""
    pid = row["preference_id"]
    if row["sealed"] is not None:
        return open_sealed(key, pid, row["sealed"])
    return Content(
        product=decrypt_product(key, pid, row["product_ct"]),
        attributes=decrypt_attributes(key, pid, row["attributes_ct"]),
        note=decrypt_note(key, pid, row["note_ct"]),
        source=decrypt_source(key, pid, row["source_ct"]),
    )


def product_of(key: DataKey, row: Row) -> Product:
    """The product of a preference row (a query selecting ``sealed`` and ``product_ct``)."""
    if row["sealed"] is not None:
        return open_sealed(key, row["preference_id"], row["sealed"]).product
    return decrypt_product(key, row["preference_id"], row["product_ct"])


def decrypt_product(key: DataKey, preference_id: uuid.UUID, blob: bytes) -> Product:
    product = _product.decode(key.decrypt(blob, TABLE, "product", preference_id))
    if product.sku == NO_SKU:
        return msgspec.structs.replace(product, sku=None)
    return product


def decrypt_attributes(key: DataKey, preference_id: uuid.UUID, blob: bytes) -> dict[str, str]:
    return _attributes.decode(key.decrypt(blob, TABLE, "attributes", preference_id))


def decrypt_note(key: DataKey, preference_id: uuid.UUID, blob: bytes | None) -> str | None:
    if blob is None:
        return None
    note: str = msgspec.json.decode(key.decrypt(blob, TABLE, "note", preference_id))
    return note


def decrypt_source(key: DataKey, preference_id: uuid.UUID, blob: bytes | None) -> Source | None:
    """Where a till-added preference came from (None: its customer typed it)."""
    if blob is None:
        return None
    return _source.decode(key.decrypt(blob, TABLE, "source", preference_id))


class PurchaseHistory(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """How often the customer bought it and when last: personal, so sealed (``purchases_ct``)."""

    purchases: int
    last_purchased_on: date | None


_purchases = msgspec.msgpack.Decoder(PurchaseHistory)


def seal_purchases(
    key: DataKey, preference_id: uuid.UUID, purchases: int, last_purchased_on: date | None
) -> bytes:
    history = PurchaseHistory(purchases=purchases, last_purchased_on=last_purchased_on)
    return key.encrypt(msgspec.msgpack.encode(history), TABLE, "purchases", preference_id)


def open_purchases(key: DataKey, row: Row) -> PurchaseHistory:
    """A preference row's purchase history: sealed, or (rows written before revision 0009, until
    the backfill seals them) in the columns in clear."""
    if row["purchases_ct"] is None:
        return PurchaseHistory(
            purchases=row["purchases"], last_purchased_on=row["last_purchased_on"]
        )
    blob = key.decrypt(row["purchases_ct"], TABLE, "purchases", row["preference_id"])
    return _purchases.decode(blob)


def shared(
    key: DataKey,
    fields: Sequence[str],
    catalogue: Mapping[str, Status],
    pid: uuid.UUID,
    rank: int,
    status: Status,
    product_ct: bytes | None,
    attributes_ct: bytes | None,
    note_ct: bytes | None,
    sealed: bytes | None,
) -> SharedPreference:
    """A preference as an audience sees it: the granted fields, and the catalogue's status where
    it knows the SKU. A sealed preference is opened whole (one ciphertext) and only the granted
    fields are copied out of it; for a row still in the per-field format the query left the
    ciphertexts of fields not granted NULL but the product's, which is opened for its SKU alone
    when not granted."""
    if sealed is not None:
        content = open_sealed(key, pid, sealed)
        view = SharedPreference(
            id=pid, rank=rank, status=overlaid(status, content.product.sku, catalogue)
        )
        if "product" in fields:
            view.product = content.product
        if "attributes" in fields:
            view.attributes = content.attributes
        if "note" in fields:
            view.note = content.note
        return view
    assert product_ct is not None  # the table's check: sealed or per field
    product = decrypt_product(key, pid, product_ct)
    view = SharedPreference(id=pid, rank=rank, status=overlaid(status, product.sku, catalogue))
    if "product" in fields:
        view.product = product
    if attributes_ct is not None:
        view.attributes = decrypt_attributes(key, pid, attributes_ct)
    if note_ct is not None or "note" in fields:
        view.note = decrypt_note(key, pid, note_ct)
    return view


def shared_view(key: DataKey, catalogue: Mapping[str, Status], row: Row) -> SharedPreference:
    """:func:`shared` for a row of a query built on :func:`shown`."""
    return shared(
        key,
        row["fields"],
        catalogue,
        row["preference_id"],
        row["rank"],
        row["status"],
        row["product_ct"],
        row["attributes_ct"],
        row["note_ct"],
        row["sealed"],
    )


def skus(key: DataKey, rows: Sequence[Row]) -> list[str | None]:
    """The SKUs of preference rows (for asking the catalogue about them)."""
    return [product_of(key, row).sku for row in rows]


def shown(*carried: str, customer: str | None = None, probe: bool = False) -> str:
    """The granted columns of the preferences a grant covers, for a CTE named ``hit`` that
    carries customer_id, fields and preference_ids (NULL meaning all); ``carried`` names more
    columns of ``hit`` to pass through. The sealed content comes where a row has it, and only
    then, for a row not yet sealed, the granted fields' ciphertexts and the product's (the SKU
    decides the status shown); :func:`shared` shows only the granted fields.

    ``customer``: the one customer to read, as a column of an outer query that read them by
    customer_id (for a ``hit`` of several customers that does not carry it from such a read):
    on a cluster, the preferences are read on that customer's node.

    ``probe``: each hit's preferences read by its own index probe (a plan kept as long as its
    connection, made while the tables were nearly empty, would otherwise read them all at once)."""
    extra = "".join(f"hit.{column}, " for column in carried)
    one = "" if customer is None else f" AND p.customer_id = {customer}"
    reads = (
        "hit CROSS JOIN LATERAL (SELECT * FROM preferences p "
        f"WHERE p.customer_id = hit.customer_id{one} OFFSET 0) p"
        if probe
        else f"hit JOIN preferences p ON p.customer_id = hit.customer_id{one}"
    )
    return f"""
    SELECT {extra}p.preference_id, p.rank, p.status, p.sealed,
           CASE WHEN p.sealed IS NULL THEN p.product_ct END AS product_ct,
           CASE WHEN p.sealed IS NULL AND 'attributes' = ANY(hit.fields)
                THEN p.attributes_ct END AS attributes_ct,
           CASE WHEN p.sealed IS NULL AND 'note' = ANY(hit.fields) THEN p.note_ct END AS note_ct
    FROM {reads}
    WHERE hit.preference_ids IS NULL OR p.preference_id = ANY(hit.preference_ids)
"""


SHOWN = shown()
