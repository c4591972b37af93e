"""What a partner knows a customer by, and the customer's preferences by.

The customer reference: a keyed pairwise value, one per (partner, customer), kept so that key
rotation does not change it. Preference ids: random, one per (customer, partner, preference),
stable for that partner and meaningless to any other recipient. The customer keeps their own
preference ids; a till is shown none at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from prefs.crypto import BlindIndex
from prefs.grants import partner_audience

REF = "SELECT ref FROM partner_refs WHERE partner_id = $1 AND customer_id = $2"
ADD_REF = """
INSERT INTO partner_refs (partner_id, ref, customer_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
REFS_OF = """
SELECT customer_id, ref FROM partner_refs WHERE partner_id = $1 AND customer_id = ANY($2::uuid[])
"""
CUSTOMER_OF = "SELECT customer_id FROM partner_refs WHERE partner_id = $1 AND ref = $2"


async def reference(
    conn: asyncpg.Connection, partner_id: uuid.UUID, customer_id: uuid.UUID
) -> str | None:
    """The partner's reference for the customer, if one was made."""
    ref: str | None = await conn.fetchval(REF, partner_id, customer_id)
    return ref


async def refs_of(
    conn: asyncpg.Connection, partner_id: uuid.UUID, customer_ids: list[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The partner's references for these customers (those it has one for)."""
    return {
        row["customer_id"]: row["ref"]
        for row in await conn.fetch(REFS_OF, partner_id, customer_ids)
    }


async def ensure_ref(
    conn: asyncpg.Connection, index: BlindIndex, partner_id: uuid.UUID, customer_id: uuid.UUID
) -> str:
    """The partner's own stable reference for the customer (kept, so key rotation keeps it)."""
    ref = await reference(conn, partner_id, customer_id)
    if ref is None:
        await conn.execute(
            ADD_REF, partner_id, index.pairwise(partner_id, customer_id), customer_id
        )
        ref = await reference(conn, partner_id, customer_id)
    assert ref is not None
    return ref


async def customer_of(
    conn: asyncpg.Connection, partner_id: uuid.UUID, ref: str
) -> uuid.UUID | None:
    """The customer behind a partner's reference, or None."""
    customer_id: uuid.UUID | None = await conn.fetchval(CUSTOMER_OF, partner_id, ref)
    return customer_id


# Rows another transaction adds at the same moment are neither returned by the insert nor
# seen by the select (both use the statement's snapshot): the caller asks once more for them.
REFS = """
WITH wanted AS (
    SELECT DISTINCT w.preference_id FROM unnest($3::uuid[]) AS w(preference_id)
), added AS (
    INSERT INTO partner_preference_refs (customer_id, partner_id, preference_id)
    SELECT $1, $2, p.preference_id
    FROM wanted JOIN preferences p ON p.customer_id = $1 AND p.preference_id = wanted.preference_id
    ON CONFLICT DO NOTHING
    RETURNING preference_id, ref
)
SELECT preference_id, ref FROM added
UNION ALL
SELECT m.preference_id, m.ref
FROM partner_preference_refs m JOIN wanted ON wanted.preference_id = m.preference_id
WHERE m.customer_id = $1 AND m.partner_id = $2
"""
GRANTED = """
INSERT INTO partner_preference_refs (customer_id, partner_id, preference_id)
SELECT p.customer_id, $2, p.preference_id
FROM consents g JOIN preferences p ON p.customer_id = g.customer_id
WHERE g.customer_id = $1 AND g.audience = $3
  AND (g.preference_ids IS NULL OR p.preference_id = ANY(g.preference_ids))
ON CONFLICT DO NOTHING
"""
PREFERENCE_OF = """
SELECT preference_id FROM partner_preference_refs
WHERE customer_id = $1 AND partner_id = $2 AND ref = $3
"""


async def refs_for(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    partner_id: uuid.UUID,
    preference_ids: Sequence[uuid.UUID],
) -> dict[uuid.UUID, uuid.UUID]:
    """The partner's id for each of the customer's preferences (made on first use)."""
    refs: dict[uuid.UUID, uuid.UUID] = {}
    for _ in range(2):
        missing = [pid for pid in preference_ids if pid not in refs]
        if not missing:
            break
        rows = await conn.fetch(REFS, customer_id, partner_id, missing)
        refs |= {row["preference_id"]: row["ref"] for row in rows}
    return refs


async def make_for_grant(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID
) -> None:
    """Make the partner's ids for every preference its grant covers, as the grant is given, so
    that reorders placed later never wait on each other to make the same id."""
    await conn.execute(GRANTED, customer_id, partner_id, partner_audience(partner_id))


async def preference_of(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID, ref: uuid.UUID
) -> uuid.UUID | None:
    """The customer's preference a partner's id stands for, or None (another partner's id, an
    id of a deleted preference, or one that never existed)."""
    preference_id: uuid.UUID | None = await conn.fetchval(
        PREFERENCE_OF, customer_id, partner_id, ref
    )
    return preference_id
