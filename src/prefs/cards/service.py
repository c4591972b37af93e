"""Proving a loyalty card: the customer shows a checkout code while the till scans the card.

A card the customer adds is only claimed (card_claims); several customers may claim one card,
and no answer to adding a card says whether anyone else holds it. Confirmation at a till moves
the card to the customer whose code was shown (card_index, the only table the till's lookup
searches) and ends every other customer's hold on it. Confirmations that find nothing count as
misses of the till's key and store, with the lookups.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from prefs.crypto import BlindIndex
from prefs.throttle import missed, refusal

# The code's customer, if the code is in force here (read, then used under the customer locks:
# erasure and withdrawal lock the customer before they end codes).
CODE_OWNER = """
SELECT customer_id FROM checkout_codes
WHERE code_hash = ANY($1::bytea[]) AND expires_at > now() AND (store IS NULL OR store = $2)
"""
# A code is bound to the first store that uses it.
USE_CODE = """
UPDATE checkout_codes SET store = $2
WHERE code_hash = ANY($1::bytea[]) AND expires_at > now() AND (store IS NULL OR store = $2)
RETURNING customer_id
"""
HOLDERS = """
SELECT customer_id FROM card_index WHERE card_hash = ANY($1::bytea[])
UNION
SELECT customer_id FROM card_claims WHERE card_hash = ANY($1::bytea[])
"""
# In customer order, like every other lock on customers taken with others: no deadlock.
LOCK_CUSTOMERS = """
SELECT customer_id FROM customers WHERE customer_id = ANY($1::uuid[])
ORDER BY customer_id FOR UPDATE
"""
CLAIMS_OF = """
SELECT card_hash, index_version FROM card_claims
WHERE customer_id = $1 AND card_hash = ANY($2::bytea[])
"""
PROVEN_OF = "SELECT 1 FROM card_index WHERE customer_id = $1 AND card_hash = ANY($2::bytea[])"
# Someone else holds the card and proved it at a till: a till confirmation never takes it from
# them (only a card enrolled before proofs existed, never proven, can be taken over). Two reads,
# each on one shard group: the card's other holders by its hash, then whether any of them proved
# it, by customer_id. Read after the holders are locked: a card moves to another customer only
# with every holder locked (this customer among them), so the holders read stay the holders.
OTHER_HOLDERS = """
SELECT customer_id FROM card_index WHERE card_hash = ANY($1::bytea[]) AND customer_id <> $2
"""
PROVEN_BY_ANOTHER = """
SELECT 1 FROM customers WHERE customer_id = ANY($1::uuid[]) AND card_proven_at IS NOT NULL
LIMIT 1
"""
MARK_PROVEN = "UPDATE customers SET card_proven_at = now() WHERE customer_id = $1"
END_OTHER_HOLDS = """
UPDATE customers SET card_ct = NULL, updated_at = now()
WHERE customer_id = ANY($1::uuid[]) AND customer_id <> $2
"""
DROP_CLAIMS = "DELETE FROM card_claims WHERE card_hash = ANY($1::bytea[]) OR customer_id = $2"
DROP_INDEX = "DELETE FROM card_index WHERE card_hash = ANY($1::bytea[]) OR customer_id = $2"
PROVE = """
INSERT INTO card_index (card_hash, index_version, customer_id)
SELECT card_hash, index_version, $3 FROM unnest($1::bytea[], $2::int[]) AS c(card_hash, index_version)
"""


class _NoMatch(Exception):
    """Nothing to confirm: the transaction is rolled back and the miss counted."""


async def confirm(
    conn: asyncpg.Connection,
    index: BlindIndex,
    key_hash: bytes,
    store: str,
    card: str,
    code: str,
    misses_per_key: int,
    misses_per_store: int,
) -> None:
    """Confirm ``card`` for the customer whose checkout ``code`` the till at ``store`` was shown.

    Unknown, expired or ended code, a code bound to another store, a card the code's customer
    has not claimed: all the same 404, counted as a miss of the key and the store.
    """
    await refusal(conn, key_hash, store, misses_per_key, misses_per_store)
    card_hashes = index.all_digests("card", card.encode())
    code_hashes = index.all_digests("checkout-code", code.encode())
    try:
        async with conn.transaction():
            customer_id = await conn.fetchval(CODE_OWNER, code_hashes, store)
            if customer_id is None:
                raise _NoMatch
            await _take_over(conn, customer_id, card_hashes, (code_hashes, store))
    except _NoMatch:
        await missed(conn, key_hash, store, misses_per_key, misses_per_store)


async def _take_over(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    card_hashes: Sequence[bytes],
    code: tuple[Sequence[bytes], str] | None = None,
) -> None:
    """The customer's claim becomes the proven card; everyone else's claim ends, and so does a
    hold never proven at a till (a card enrolled before proofs). A card someone else proved is
    never taken. With a code (its hashes and the till's store), only while that code is still
    in force there."""
    holders = [row["customer_id"] for row in await conn.fetch(HOLDERS, card_hashes)]
    if customer_id not in holders:
        raise _NoMatch
    await conn.execute(LOCK_CUSTOMERS, holders)
    if code is not None and await conn.fetchval(USE_CODE, *code) != customer_id:
        raise _NoMatch  # ended, or bound to another store, meanwhile
    others = [
        row["customer_id"] for row in await conn.fetch(OTHER_HOLDERS, card_hashes, customer_id)
    ]
    if others and await conn.fetchval(PROVEN_BY_ANOTHER, others):
        raise _NoMatch
    claims = await conn.fetch(CLAIMS_OF, customer_id, card_hashes)
    if not claims:
        if await conn.fetchval(PROVEN_OF, customer_id, card_hashes):
            return  # confirmed before: nothing to do
        raise _NoMatch  # changed the card meanwhile
    await conn.execute(END_OTHER_HOLDS, holders, customer_id)
    await conn.execute(DROP_CLAIMS, card_hashes, customer_id)
    await conn.execute(DROP_INDEX, card_hashes, customer_id)
    await conn.execute(
        PROVE,
        [claim["card_hash"] for claim in claims],
        [claim["index_version"] for claim in claims],
        customer_id,
    )
    await conn.execute(MARK_PROVEN, customer_id)


async def prove(
    conn: asyncpg.Connection, index: BlindIndex, customer_id: uuid.UUID, card: str
) -> bool:
    """Confirm the customer's claim of ``card`` without a till (the development demo, load-test
    seeding); False when they have not claimed it. Call inside a transaction."""
    try:
        await _take_over(conn, customer_id, index.all_digests("card", card.encode()))
    except _NoMatch:
        return False
    return True
