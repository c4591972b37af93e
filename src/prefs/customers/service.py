"""Enrolment, the loyalty card and the customer's data key."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import asyncpg

from prefs.crypto import Vault
from prefs.customer_keys import data_key
from prefs.customers.schemas import Profile
from prefs.errors import NotEnrolled, TooManyRequests
from prefs.identifiers import normalise_card

FIND_CUSTOMER = """
SELECT customer_id, subject_hash FROM customer_subjects WHERE subject_hash = ANY($1::bytea[])
ORDER BY array_position($1::bytea[], subject_hash)
"""
# Both in version order, so two transactions adding hashes of one subject never wait on each
# other crosswise (whatever order their keyrings list the versions in). A sign-in adds the
# missing hashes only while the customer row exists, holding it against an erasure until done,
# so no hash outlives an erased customer (FOR UPDATE, as a card change takes it, so an
# enrolment that goes on to set the card never has to upgrade a shared lock).
CLAIM_SUBJECT = """
INSERT INTO customer_subjects (subject_hash, index_version, customer_id)
SELECT subject_hash, index_version, $3
FROM unnest($1::bytea[], $2::int[]) AS given (subject_hash, index_version)
ORDER BY index_version
ON CONFLICT (subject_hash) DO NOTHING
RETURNING subject_hash
"""
ADD_SUBJECT_HASHES = """
INSERT INTO customer_subjects (subject_hash, index_version, customer_id)
SELECT given.subject_hash, given.index_version, owner.customer_id
FROM unnest($1::bytea[], $2::int[]) AS given (subject_hash, index_version)
CROSS JOIN (SELECT customer_id FROM customers WHERE customer_id = $3 FOR UPDATE) AS owner
ORDER BY given.index_version
ON CONFLICT (subject_hash) DO NOTHING
"""


async def find_customer_id(
    conn: asyncpg.Connection, subject_hashes: Mapping[int, bytes]
) -> uuid.UUID | None:
    """The customer a subject belongs to, looking under every index-key version (primary first).

    A subject found without its hash under some configured version gets that hash added, so
    during an index-key switch customers gain a hash under every version as they sign in and
    stay findable whichever version is later dropped (subjects are never stored in clear, so
    they cannot be rehashed in bulk).
    """
    rows = await conn.fetch(FIND_CUSTOMER, list(subject_hashes.values()))
    if not rows:
        return None
    customer_id: uuid.UUID = rows[0]["customer_id"]
    if any(row["customer_id"] != customer_id for row in rows):
        customer_id = await _reunite(conn, [row["customer_id"] for row in rows], customer_id)
    if len(rows) < len(subject_hashes):
        stored = {row["subject_hash"] for row in rows}
        missing = {v: h for v, h in subject_hashes.items() if h not in stored}
        await conn.execute(ADD_SUBJECT_HASHES, list(missing.values()), list(missing), customer_id)
    return customer_id


# One subject, several accounts: a version was removed from PREFS_INDEX_KEY while its customer
# stayed away, the customer enrolled again under the remaining ones, and the old version is back.
# Locked in id order, so two sign-ins of the subject take turns.
ACCOUNTS = """
SELECT c.customer_id, c.created_at,
       c.card_ct IS NULL
       AND NOT EXISTS (SELECT 1 FROM preferences p WHERE p.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM consent_ledger l WHERE l.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM reorders r WHERE r.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM checkout_codes k WHERE k.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM card_index i WHERE i.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM access_log a WHERE a.customer_id = c.customer_id)
       AND NOT EXISTS (SELECT 1 FROM idempotency_keys d WHERE d.customer_id = c.customer_id)
       AS empty
FROM customers c WHERE c.customer_id = ANY($1::uuid[])
ORDER BY c.customer_id
FOR UPDATE
"""
MOVE_SUBJECTS = """
UPDATE customer_subjects SET customer_id = $1 WHERE customer_id = ANY($2::uuid[])
"""
DISSOLVE = [
    "DELETE FROM partner_refs WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM customer_keys WHERE customer_id = ANY($1::uuid[])",
    "DELETE FROM customers WHERE customer_id = ANY($1::uuid[])",
]


async def _reunite(
    conn: asyncpg.Connection, found: list[uuid.UUID], primary_found: uuid.UUID
) -> uuid.UUID:
    """The account a subject found under several signs in to.

    The account enrolled first wins when every later one holds nothing the customer made (no
    preference, consent, card, reorder, code or disclosure): the later ones are dissolved into it
    (their subject hashes move over, their empty rows and keys go). When a later one holds data,
    nothing is merged or dropped and the account found under the primary version is used.
    """
    async with conn.transaction():
        accounts = await conn.fetch(ACCOUNTS, sorted(set(found)))
        if not accounts:
            return primary_found
        first, *later = sorted(accounts, key=lambda row: (row["created_at"], row["customer_id"]))
        if not all(row["empty"] for row in later):
            return primary_found
        dissolved = [row["customer_id"] for row in later]
        await conn.execute(MOVE_SUBJECTS, first["customer_id"], dissolved)
        for statement in DISSOLVE:
            await conn.execute(statement, dissolved)
        winner: uuid.UUID = first["customer_id"]
        return winner


async def require_customer_id(
    conn: asyncpg.Connection, subject_hashes: Mapping[int, bytes]
) -> uuid.UUID:
    customer_id = await find_customer_id(conn, subject_hashes)
    if customer_id is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    return customer_id


INSERT_CUSTOMER = "INSERT INTO customers (customer_id) VALUES ($1)"
INSERT_KEY = """
INSERT INTO customer_keys (customer_id, generation, master_version, wrapped) VALUES ($1, $2, $3, $4)
"""


class _SubjectTaken(Exception):
    """A concurrent enrolment of the same subject claimed one of its hashes first."""


async def enrol(
    conn: asyncpg.Connection,
    vault: Vault,
    subject_hashes: Mapping[int, bytes],
    card: str | None,
) -> tuple[Profile, bool]:
    """Enrol the subject (or find them enrolled); returns the profile and whether it is new.

    The subject is recorded under every configured index-key version, so processes that know
    only one of them (during a key switch) all find the same customer.
    """
    async with conn.transaction():
        customer_id = await find_customer_id(conn, subject_hashes)
        created = False
        if customer_id is None:
            customer_id = uuid.uuid4()
            try:
                async with conn.transaction():  # a savepoint: all of the hashes, or none
                    claimed = await conn.fetch(
                        CLAIM_SUBJECT,
                        list(subject_hashes.values()),
                        list(subject_hashes),
                        customer_id,
                    )
                    if len(claimed) < len(subject_hashes):
                        raise _SubjectTaken
            except _SubjectTaken:
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
# The card is confirmed when it is in card_index under the customer: found by its hash (the card's
# shard), which the profile has once it decrypted the card. A customer's card_index rows are
# always those of the card in card_ct: a card change and a lost card delete them in the
# transaction that changes card_ct, and a confirmation indexes the customer's own claims of it.
CONFIRMED = (
    "SELECT 1 FROM card_index WHERE card_hash = ANY($1::bytea[]) AND customer_id = $2 LIMIT 1"
)
# Read again when the card looks pending: a card changed (or lost) between the two reads above
# would otherwise show the old card as pending (every new card_ct is a new ciphertext). Under the
# customer lock, or in one snapshot (the export), it reads the same.
CARD_CT = "SELECT card_ct FROM customers WHERE customer_id = $1"


async def profile(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> Profile:
    while True:
        row = await conn.fetchrow(PROFILE, customer_id)
        if row is None:
            raise NotEnrolled("Enrol first with POST /v1/me.")
        card, confirmed = None, False
        if row["card_ct"] is not None:
            key = await data_key(conn, vault, customer_id)
            card = key.decrypt(row["card_ct"], "customers", "card", customer_id).decode()
            hashes = vault.index.all_digests("card", card.encode())
            confirmed = await conn.fetchval(CONFIRMED, hashes, customer_id) is not None
            if not confirmed and await conn.fetchval(CARD_CT, customer_id) != row["card_ct"]:
                continue  # changed meanwhile: read it all again
        return Profile(
            id=customer_id,
            card=card,
            card_status=None if card is None else "confirmed" if confirmed else "pending",
            preferences=row["preferences"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


# Card changes per customer per hour (the window starts with the first change in it): a card
# proves nothing until it is confirmed at a till, so this only keeps probing slow.
CARD_CHANGES_PER_HOUR = 10
# Card changes of one customer take turns (the row lock): without it, two changes at once each
# delete the claims they can see and insert their own, and both cards stay claimed. The change
# is counted under the same lock; one past the limit answers when the window ends.
COUNT_CARD_CHANGE = """
UPDATE customers SET
    card_changes = CASE WHEN card_window_start > now() - interval '1 hour'
                        THEN card_changes + 1 ELSE 1 END,
    card_window_start = CASE WHEN card_window_start > now() - interval '1 hour'
                             THEN card_window_start ELSE now() END
WHERE customer_id = $1
RETURNING card_changes,
          greatest(1, ceil(extract(epoch FROM card_window_start + interval '1 hour' - now())))::int
              AS retry_after
"""
# Is the card the customer's own confirmed card already (then it stays confirmed)?
OWN_CONFIRMED = "SELECT 1 FROM card_index WHERE customer_id = $1 AND card_hash = ANY($2::bytea[])"
DELETE_CARD_INDEX = "DELETE FROM card_index WHERE customer_id = $1"
DELETE_CLAIMS = "DELETE FROM card_claims WHERE customer_id = $1"
# A claim says nothing about anyone else's: many customers may claim one card, until one of
# them confirms it at a till (prefs.cards).
INSERT_CLAIMS = """
INSERT INTO card_claims (card_hash, index_version, customer_id)
SELECT card_hash, index_version, $3 FROM unnest($1::bytea[], $2::int[]) AS c(card_hash, index_version)
ON CONFLICT DO NOTHING
"""
UPDATE_CARD = """
UPDATE customers SET card_ct = $2, card_proven_at = NULL, updated_at = now()
WHERE customer_id = $1
"""


async def _set_card(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, raw: str | None
) -> None:
    """Call inside a transaction: the customer row stays locked until it ends.

    A new card is only claimed ("pending") until confirmed at a till; the answer is the same
    whether or not anyone else holds or claims the card.
    """
    card = normalise_card(raw) if raw is not None else None
    counted = await conn.fetchrow(COUNT_CARD_CHANGE, customer_id)
    if counted is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    if counted["card_changes"] > CARD_CHANGES_PER_HOUR:
        wait = counted["retry_after"]
        raise TooManyRequests(f"Too many card changes; try again in {wait} s.", retry_after=wait)
    hashes = [vault.index.card(card, v) for v in vault.index.versions] if card else []
    if hashes and await conn.fetchval(OWN_CONFIRMED, customer_id, hashes):
        return  # the same card, already proven
    await conn.execute(DELETE_CARD_INDEX, customer_id)
    await conn.execute(DELETE_CLAIMS, customer_id)
    if card is None:
        await conn.execute(UPDATE_CARD, customer_id, None)
        return
    await conn.execute(INSERT_CLAIMS, hashes, list(vault.index.versions), customer_id)
    key = await data_key(conn, vault, customer_id)
    await conn.execute(
        UPDATE_CARD, customer_id, key.encrypt(card.encode(), "customers", "card", customer_id)
    )


async def set_card(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, card: str | None
) -> Profile:
    """Set (as pending, until confirmed at a till) or clear the loyalty card: encrypted, plus
    one blind index per index-key version."""
    async with conn.transaction():
        await _set_card(conn, vault, customer_id, card)
        return await profile(conn, vault, customer_id)
