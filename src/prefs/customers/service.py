"""Enrolment, the loyalty card and the customer's data key."""

from __future__ import annotations

import re
import uuid

import asyncpg

from prefs.crypto import DataKey, Vault
from prefs.customers.schemas import Profile
from prefs.errors import Conflict, InvalidInput, NotEnrolled

_CARD_SEPARATORS = re.compile(r"[ \-]")
_CARD_DIGITS = re.compile(r"[0-9]{6,24}")


def normalise_card(raw: str) -> str:
    """Loyalty card numbers: spaces and dashes dropped, 6–24 ASCII digits left."""
    card = _CARD_SEPARATORS.sub("", raw)
    if not _CARD_DIGITS.fullmatch(card):
        raise InvalidInput(
            "card must be 6 to 24 ASCII digits (spaces and dashes are ignored).",
            errors=[{"key": "card", "source": "body", "message": "6 to 24 ASCII digits"}],
        )
    return card


FIND_CUSTOMER = """
SELECT customer_id, subject_hash FROM customer_subjects WHERE subject_hash = ANY($1::bytea[])
ORDER BY array_position($1::bytea[], subject_hash) LIMIT 1
"""
REHASH_SUBJECT = """
INSERT INTO customer_subjects (subject_hash, index_version, customer_id) VALUES ($1, $2, $3)
ON CONFLICT (subject_hash) DO NOTHING
"""


async def find_customer_id(
    conn: asyncpg.Connection, subject_hashes: tuple[bytes, ...], index_version: int | None = None
) -> uuid.UUID | None:
    """The customer a subject belongs to, looking under every index-key version (primary first).

    A subject found only under an older index key gets its primary-key hash added, so after an
    index-key rotation customers move over as they sign in (subjects are never stored in clear,
    so they cannot be rehashed in bulk).
    """
    row = await conn.fetchrow(FIND_CUSTOMER, list(subject_hashes))
    if row is None:
        return None
    customer_id: uuid.UUID = row["customer_id"]
    if index_version is not None and row["subject_hash"] != subject_hashes[0]:
        await conn.execute(REHASH_SUBJECT, subject_hashes[0], index_version, customer_id)
    return customer_id


async def require_customer_id(
    conn: asyncpg.Connection, subject_hashes: tuple[bytes, ...], index_version: int | None = None
) -> uuid.UUID:
    customer_id = await find_customer_id(conn, subject_hashes, index_version)
    if customer_id is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    return customer_id


DATA_KEY = "SELECT generation, master_version, wrapped FROM customer_keys WHERE customer_id = $1"
REWRAP = """
UPDATE customer_keys SET wrapped = $3, master_version = $4, rewrapped_at = now()
WHERE customer_id = $1 AND wrapped = $2
"""


async def data_key(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> DataKey:
    """The customer's unwrapped data key; a wrap under an old master key is rewrapped on the way."""
    row = await conn.fetchrow(DATA_KEY, customer_id)
    if row is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    key = vault.envelope.unwrap(customer_id, row["generation"], row["wrapped"])
    if row["master_version"] != vault.envelope.master.primary:
        rewrapped = vault.envelope.rewrap(customer_id, row["generation"], row["wrapped"])
        await conn.execute(
            REWRAP, customer_id, row["wrapped"], rewrapped, vault.envelope.master.primary
        )
    return key


CLAIM_SUBJECT = """
INSERT INTO customer_subjects (subject_hash, index_version, customer_id) VALUES ($1, $2, $3)
ON CONFLICT (subject_hash) DO NOTHING RETURNING customer_id
"""
INSERT_CUSTOMER = "INSERT INTO customers (customer_id) VALUES ($1)"
INSERT_KEY = """
INSERT INTO customer_keys (customer_id, generation, master_version, wrapped) VALUES ($1, $2, $3, $4)
"""


async def enrol(
    conn: asyncpg.Connection,
    vault: Vault,
    subject_hashes: tuple[bytes, ...],
    index_version: int,
    card: str | None,
) -> tuple[Profile, bool]:
    """Enrol the subject (or find them enrolled); returns the profile and whether it is new."""
    async with conn.transaction():
        customer_id = await find_customer_id(conn, subject_hashes)
        created = False
        if customer_id is None:
            customer_id = uuid.uuid4()
            claimed = await conn.fetchval(
                CLAIM_SUBJECT, subject_hashes[0], index_version, customer_id
            )
            if claimed is None:  # a concurrent enrolment of the same subject won
                customer_id = await require_customer_id(conn, subject_hashes)
            else:
                key, wrapped = vault.envelope.new_data_key(customer_id)
                await conn.execute(INSERT_CUSTOMER, customer_id)
                await conn.execute(
                    INSERT_KEY,
                    customer_id,
                    key.generation,
                    vault.envelope.master_version(wrapped),
                    wrapped,
                )
                created = True
        if card is not None:
            await _set_card(conn, vault, customer_id, card)
        return await profile(conn, vault, customer_id), created


PROFILE = """
SELECT c.customer_id, c.card_ct, c.created_at, c.updated_at,
       (SELECT count(*) FROM preferences p WHERE p.customer_id = c.customer_id) AS preferences
FROM customers c WHERE c.customer_id = $1
"""


async def profile(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> Profile:
    row = await conn.fetchrow(PROFILE, customer_id)
    if row is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    card = None
    if row["card_ct"] is not None:
        key = await data_key(conn, vault, customer_id)
        card = key.decrypt(row["card_ct"], "customers", "card", customer_id).decode()
    return Profile(
        id=customer_id,
        card=card,
        preferences=row["preferences"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


DELETE_CARD_INDEX = "DELETE FROM card_index WHERE customer_id = $1"
INSERT_CARD_INDEX = """
INSERT INTO card_index (card_hash, index_version, customer_id) VALUES ($1, $2, $3)
ON CONFLICT (card_hash) DO NOTHING RETURNING customer_id
"""
UPDATE_CARD = "UPDATE customers SET card_ct = $2, updated_at = now() WHERE customer_id = $1"


async def _set_card(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, raw: str | None
) -> None:
    await conn.execute(DELETE_CARD_INDEX, customer_id)
    if raw is None:
        await conn.execute(UPDATE_CARD, customer_id, None)
        return
    card = normalise_card(raw)
    for version in vault.index.versions:
        claimed = await conn.fetchval(
            INSERT_CARD_INDEX, vault.index.card(card, version), version, customer_id
        )
        if claimed is None:
            raise Conflict("This card cannot be registered to your account.")
    key = await data_key(conn, vault, customer_id)
    await conn.execute(
        UPDATE_CARD, customer_id, key.encrypt(card.encode(), "customers", "card", customer_id)
    )


async def set_card(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, card: str | None
) -> Profile:
    """Set or clear the loyalty card (encrypted, plus one blind index per index-key version)."""
    async with conn.transaction():
        await _set_card(conn, vault, customer_id, card)
        return await profile(conn, vault, customer_id)
