"""Recording a disclosure: a visit as the access log keeps it, sealed under the customer's data key.

Every capability that shows a customer's data to someone records it here, in the transaction
that reads what it shows; prefs.access_log reads the log back for the customer.

What identifies a visit (who saw it, at which store, through which credential, which
preferences and fields, why and how) is one ciphertext in ``access_log.sealed``, bound to its
customer, table, column and row (the disclosure id): a copied table or a backup says nothing,
and erasure, which destroys the data key, shreds it. Only customer_id, at and disclosure_id stay
in clear, for retention, ordering and distribution.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
import msgspec

from prefs.credentials import Credential
from prefs.crypto import DataKey, Vault

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
    # a till's purchase write (purpose "purchase"): what it added and what it counted again, in
    # words as they were then ("Classic Chino, waist 34 leg 34"), so the log still says so after
    # the preference is changed or deleted; visits sealed before these existed decode as empty
    added: list[str] = msgspec.field(default_factory=list)
    counted: list[str] = msgspec.field(default_factory=list)


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


KEYS = """
SELECT customer_id, generation, wrapped FROM customer_keys WHERE customer_id = ANY($1::uuid[])
"""
# every writer inserts sealed entries only (at: the transaction's now())
INSERT_SEALED = """
INSERT INTO access_log (disclosure_id, customer_id, sealed)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bytea[])
"""


async def record(
    conn: asyncpg.Connection,
    who: Credential,
    purpose: str,
    via: str,
    disclosures: list[tuple[uuid.UUID, list[uuid.UUID], list[str]]],
    *,
    vault: Vault,
    keys: Mapping[uuid.UUID, DataKey] | None = None,
) -> None:
    """Log disclosures to a credential's holder: (customer, preferences, fields) each, sealed
    under each customer's data key (a customer without one was erased meanwhile: nothing to
    keep). ``keys``: data keys the caller already unwrapped from rows of this transaction, so
    they are neither read nor unwrapped again.

    Call inside the transaction that reads what is disclosed, so no answer leaves without its
    record.
    """
    if not disclosures:
        return
    keys = dict(keys or {})
    missing = list({customer for customer, _, _ in disclosures} - keys.keys())
    if missing:
        keys.update(
            (row["customer_id"], vault.envelope.unwrap(*row))
            for row in await conn.fetch(KEYS, missing)
        )
    ids: list[uuid.UUID] = []
    customers: list[uuid.UUID] = []
    sealed: list[bytes] = []
    for customer_id, preference_ids, fields in disclosures:
        key = keys.get(customer_id)
        if key is None:
            continue
        visit = Visit(
            actor_kind=who.kind,
            credential_id=who.id,
            actor_name=who.name,
            store=who.store,
            partner_id=who.partner_id,
            purpose=purpose,
            via=via,
            preference_ids=list(preference_ids),
            fields=list(fields),
        )
        disclosure_id = uuid.uuid4()
        ids.append(disclosure_id)
        customers.append(customer_id)
        sealed.append(seal(key, disclosure_id, visit))
    await conn.execute(INSERT_SEALED, ids, customers, sealed)
