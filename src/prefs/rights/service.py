"""Customers' rights: the export of everything held, and erasure by crypto-shredding."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from prefs import feeds
from prefs.access_log import service as access_log
from prefs.consents import ledger
from prefs.consents import service as consents
from prefs.crypto import Vault
from prefs.customer_keys import data_key
from prefs.customers.service import profile
from prefs.db import Row
from prefs.events import CustomerErased, follow
from prefs.preferences.service import list_preferences
from prefs.reorders import service as reorders

# 2: consents name their recipient as the consents page does (with the partner's reference);
# access-log entries are the access-log page's, preference names and summary included.
EXPORT_SCHEMA_VERSION = 2
BATCH = 500

# -- erasure ---------------------------------------------------------------------------------

LOCK = "SELECT created_at FROM customers WHERE customer_id = $1 FOR UPDATE"
TOMBSTONES = """
INSERT INTO erasures (subject_hash, index_version, erased_at)
SELECT subject_hash, index_version, now() FROM customer_subjects WHERE customer_id = $1
ON CONFLICT DO NOTHING
"""
# What someone may still be working on stays, closed and without its snapshot, so the partner or
# the store sees it end: a partner's accepted reorders, and a store's requested, accepted or
# ready ones (its queue shows them cancelled), and store reorders already cancelled, whose end
# the store may not have read yet. What the store finished itself (collected, declined) goes with
# the rest. The purge removes what stays after a while (prefs.retention).
CLOSE_ACCEPTED = """
UPDATE reorders
SET state = 'cancelled', updated_at = CASE WHEN state = 'cancelled' THEN updated_at ELSE now() END,
    snapshot_ct = NULL
WHERE customer_id = $1
  AND (state = 'accepted'
       OR (store_id IS NOT NULL AND state IN ('requested', 'ready', 'cancelled')))
"""
SHRED = [
    "DELETE FROM customer_keys WHERE customer_id = $1",
    "DELETE FROM customer_subjects WHERE customer_id = $1",
    "DELETE FROM card_index WHERE customer_id = $1",
    "DELETE FROM card_claims WHERE customer_id = $1",
    "DELETE FROM checkout_codes WHERE customer_id = $1",
    "DELETE FROM consents WHERE customer_id = $1",
    "DELETE FROM consent_ledger WHERE customer_id = $1",
    "DELETE FROM partner_preference_refs WHERE customer_id = $1",
    "DELETE FROM preferences WHERE customer_id = $1",
    # what is left of the reorders: those closed above, now unreadable
    "DELETE FROM reorders WHERE customer_id = $1 AND snapshot_ct IS NOT NULL",
    "DELETE FROM partner_refs WHERE customer_id = $1",
    "DELETE FROM idempotency_keys WHERE customer_id = $1",
    "DELETE FROM access_log WHERE customer_id = $1",
    "DELETE FROM customers WHERE customer_id = $1",
]


async def erase(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, *, tombstone: bool = True
) -> bool:
    """Destroy the customer's data key and every row about them, in one transaction.

    Reorders a partner or a store may still be working on stay, cancelled and without their
    snapshot (CLOSE_ACCEPTED); any copy of a ciphertext elsewhere can no longer be read, because
    the key is gone.
    Returns False when there was no such customer.
    """
    async with conn.transaction():
        if await conn.fetchrow(LOCK, customer_id) is None:
            return False
        await conn.execute("SET LOCAL prefs.erasure = 'on'")
        if tombstone:
            await conn.execute(TOMBSTONES, customer_id)
        await feeds.hold_customer(conn, customer_id)  # the tills wait, none deadlocks
        await conn.execute(CLOSE_ACCEPTED, customer_id)
        await follow(conn, vault, CustomerErased(customer_id))
        for statement in SHRED:
            await conn.execute(statement, customer_id)
    vault.envelope.forget(customer_id)
    return True


class Tombstone(msgspec.Struct, frozen=True):
    """One erasure as it travels to a restored backup: a keyed hash of the subject and a time."""

    subject_hash: bytes
    index_version: int
    erased_at: datetime


TOMBSTONE_LIST = """
SELECT subject_hash, index_version, erased_at FROM erasures ORDER BY erased_at, subject_hash
"""
RECORD_TOMBSTONE = """
INSERT INTO erasures (subject_hash, index_version, erased_at) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""


async def tombstones(conn: asyncpg.Connection) -> list[Tombstone]:
    """Every erasure recorded in this database (to carry over to a restored backup)."""
    return [Tombstone(**row) for row in await conn.fetch(TOMBSTONE_LIST)]


def encode_tombstones(found: list[Tombstone]) -> bytes:
    return msgspec.json.encode(found)


def decode_tombstones(data: bytes) -> list[Tombstone]:
    return msgspec.json.decode(data, type=list[Tombstone])


REPLAYABLE = """
SELECT DISTINCT s.customer_id
FROM erasures e
JOIN customer_subjects s ON s.subject_hash = e.subject_hash
JOIN customers c ON c.customer_id = s.customer_id
WHERE c.created_at <= e.erased_at
"""


async def replay_erasures(
    conn: asyncpg.Connection, vault: Vault, carried: Iterable[Tombstone] = ()
) -> int:
    """Erase again every customer a tombstone names who enrolled before that erasure; returns
    how many were erased.

    A backup taken before an erasure holds no tombstone for it: after restoring one, pass the
    live database's tombstones as ``carried`` (they are recorded here first, so the restored
    database keeps them).
    """
    async with conn.transaction():
        await conn.executemany(
            RECORD_TOMBSTONE, [(t.subject_hash, t.index_version, t.erased_at) for t in carried]
        )
    erased = 0
    for row in await conn.fetch(REPLAYABLE):
        erased += await erase(conn, vault, row["customer_id"], tombstone=False)
    return erased


# -- export ----------------------------------------------------------------------------------

CODES = """
SELECT fields, preference_ids, keep_purchases, created_at, expires_at FROM checkout_codes
WHERE customer_id = $1 AND expires_at > now() ORDER BY created_at, code_hash
"""
REORDERS = """
SELECT reorder_id, preference_id, fulfiller, store_id, origin, quantity, state, fields,
       snapshot_ct, created_at, updated_at
FROM reorders WHERE customer_id = $1 ORDER BY created_at, reorder_id
"""
ACCESS = """
SELECT disclosure_id, at, sealed, actor_kind, credential_id, actor_name, store, partner_id,
       purpose, via, preference_ids, fields
FROM access_log WHERE customer_id = $1 ORDER BY at, disclosure_id
"""
LEDGER = """
SELECT seq, recorded_at, receipt, prev_hash, hash FROM consent_ledger
WHERE customer_id = $1 ORDER BY seq
"""
REFS = """
SELECT r.partner_id, p.name, r.ref FROM partner_refs r JOIN partners p USING (partner_id)
WHERE r.customer_id = $1 ORDER BY r.partner_id
"""

_encode = msgspec.json.Encoder(order="sorted")


def _json(value: Any) -> bytes:
    return _encode.encode(value)


async def _array(
    cursor: Any, render: Callable[[list[Row]], Awaitable[Iterable[Any]]]
) -> AsyncIterator[bytes]:
    """A JSON array streamed from a server-side cursor, BATCH rows rendered at a time."""
    yield b"["
    first = True
    while rows := await cursor.fetch(BATCH):
        for item in await render(rows):
            yield (b"" if first else b",") + _json(item)
            first = False
    yield b"]"


def _each(render: Callable[[Row], Any]) -> Callable[[list[Row]], Awaitable[list[Any]]]:
    async def batch(rows: list[Row]) -> list[Any]:
        return [render(row) for row in rows]

    return batch


async def export(
    conn: asyncpg.Connection, vault: Vault, controller: str, customer_id: uuid.UUID
) -> AsyncIterator[bytes]:
    """Everything held about the customer, decrypted, as one JSON document in chunks.

    Runs in one repeatable-read snapshot; the long lists (reorders, ledger, access log) are read
    through server-side cursors so memory stays flat however much there is.
    """
    # A lazy rewrap may write: not in the read-only snapshot
    await data_key(conn, vault, customer_id)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        key = await data_key(conn, vault, customer_id)
        me = await profile(conn, vault, customer_id)
        yield b'{"schema_version":' + _json(EXPORT_SCHEMA_VERSION)
        yield b',"controller":' + _json(controller)
        yield b',"profile":' + _json(me)
        yield b',"preferences":' + _json(await list_preferences(conn, vault, customer_id))
        yield b',"consents":' + _json(await consents.live_consents(conn, customer_id))
        yield b',"partner_references":' + _json(
            [dict(row) for row in await conn.fetch(REFS, customer_id)]
        )
        yield b',"consent_ledger":'
        async for chunk in _array(
            await conn.cursor(LEDGER, customer_id), _each(ledger.entry_from_row)
        ):
            yield chunk
        codes = await conn.fetch(CODES, customer_id)
        yield b',"checkout_codes_in_force":' + _json(
            [
                {
                    "fields": list(r["fields"]),
                    "preferences": "all"
                    if r["preference_ids"] is None
                    else list(r["preference_ids"]),
                    "created_at": r["created_at"],
                    "expires_at": r["expires_at"],
                    "keep_purchases": r["keep_purchases"],
                    "code": "not stored: only a keyed hash is kept",
                }
                for r in codes
            ]
        )
        yield b',"reorders":'
        async for chunk in _array(
            await conn.cursor(REORDERS, customer_id),
            lambda rows: reorders.views(conn, key, rows),
        ):
            yield chunk
        yield b',"access_log":'
        async for chunk in _array(
            await conn.cursor(ACCESS, customer_id),
            lambda rows: access_log.disclosures(conn, vault, customer_id, rows),
        ):
            yield chunk
        yield b"}"
