"""A visit as the access log keeps it: sealed under the customer's data key.

What identifies a visit (who saw it, at which store, through which credential, which
preferences and fields, why and how) is one ciphertext in ``access_log.sealed``, bound to its
customer, table, column and row (the disclosure id): a copied table or a backup says nothing,
and erasure, which destroys the data key, shreds it. Only customer_id, at and disclosure_id stay
in clear, for retention, ordering and distribution.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from prefs.crypto import DataKey

TABLE, COLUMN = "access_log", "sealed"


class Visit(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    actor_kind: str
    credential_id: uuid.UUID
    actor_name: str
    store: str | None
    partner_id: uuid.UUID | None
    purpose: str
    via: str
    preference_ids: list[uuid.UUID]
    fields: list[str]


_encode = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder(Visit)


def seal(key: DataKey, disclosure_id: uuid.UUID, visit: Visit) -> bytes:
    return key.encrypt(_encode.encode(visit), TABLE, COLUMN, disclosure_id)


def open_visit(key: DataKey, disclosure_id: uuid.UUID, blob: bytes) -> Visit:
    """The visit sealed in ``blob`` (DecryptionError if it was not sealed there, for this
    customer)."""
    return _decode.decode(key.decrypt(blob, TABLE, COLUMN, disclosure_id))


def as_row(visit: Visit) -> dict[str, Any]:
    """The visit's parts by column name, as the access log's rows in clear held them."""
    return {field: getattr(visit, field) for field in Visit.__struct_fields__}
