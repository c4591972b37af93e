"""The per-customer, append-only, hash-chained consent ledger.

Each record's hash is an HMAC (under a key derived from the index keyring) over the customer,
the sequence number, the previous record's hash and the receipt's canonical JSON; the customer
row keeps the head (sequence and hash), so a removed last record is detected too.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from prefs.consents.schemas import LedgerEntry, Receipt
from prefs.crypto import BlindIndex
from prefs.db import Row

GENESIS = bytes(32)


def canonical(receipt: Receipt | dict[str, Any]) -> bytes:
    """Sorted-key JSON: the same bytes from the struct and from its stored jsonb."""
    as_builtins = msgspec.to_builtins(receipt) if isinstance(receipt, Receipt) else receipt
    return msgspec.json.encode(as_builtins, order="sorted")


def record_hash(
    index: BlindIndex, version: int, customer_id: uuid.UUID, seq: int, prev_hash: bytes, body: bytes
) -> bytes:
    message = customer_id.bytes + seq.to_bytes(8, "big") + prev_hash + body
    return index.digest("ledger", message, version)


LOCK_HEAD = "SELECT ledger_seq, ledger_head FROM customers WHERE customer_id = $1 FOR UPDATE"
INSERT = """
INSERT INTO consent_ledger (customer_id, seq, receipt_id, recorded_at, audience, state, receipt,
                            mac_version, prev_hash, hash)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""
MOVE_HEAD = "UPDATE customers SET ledger_seq = $2, ledger_head = $3 WHERE customer_id = $1"


async def append(conn: asyncpg.Connection, index: BlindIndex, receipt: Receipt) -> LedgerEntry:
    """Append one receipt to its principal's chain (call inside a transaction)."""
    customer_id = receipt.principal
    head = await conn.fetchrow(LOCK_HEAD, customer_id)
    assert head is not None
    seq = head["ledger_seq"] + 1
    prev_hash = head["ledger_head"] or GENESIS
    body = msgspec.to_builtins(receipt)
    digest = record_hash(index, index.primary, customer_id, seq, prev_hash, canonical(body))
    await conn.execute(
        INSERT,
        customer_id,
        seq,
        receipt.receipt_id,
        receipt.timestamp,
        receipt.audience,
        receipt.state,
        body,
        index.primary,
        prev_hash,
        digest,
    )
    await conn.execute(MOVE_HEAD, customer_id, seq, digest)
    return LedgerEntry(
        seq=seq,
        recorded_at=receipt.timestamp,
        receipt=receipt,
        prev_hash=prev_hash.hex(),
        hash=digest.hex(),
    )


HISTORY = """
SELECT seq, recorded_at, receipt, prev_hash, hash FROM consent_ledger
WHERE customer_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3
"""


async def history(
    conn: asyncpg.Connection, customer_id: uuid.UUID, before_seq: int, limit: int
) -> list[LedgerEntry]:
    """Ledger records, newest first, with sequence numbers below ``before_seq``."""
    return [
        entry_from_row(row) for row in await conn.fetch(HISTORY, customer_id, before_seq, limit)
    ]


# One customer's record by its receipt id, with the record before it for the same audience (a
# grant given while the one before was still given changes it). The customer's records are found
# by the primary key's first column; a customer has few.
RECORD = """
SELECT l.receipt, before.receipt_id AS before_id, before.state AS before_state
FROM consent_ledger l
LEFT JOIN LATERAL (
    SELECT b.receipt_id, b.state FROM consent_ledger b
    WHERE b.customer_id = l.customer_id AND b.audience = l.audience AND b.seq < l.seq
    ORDER BY b.seq DESC LIMIT 1
) before ON true
WHERE l.customer_id = $1 AND l.receipt_id = $2
"""


@dataclass(frozen=True)
class Record:
    """A receipt as the ledger holds it, and the one it changed (a grant given again while the
    previous grant for its audience was in force)."""

    receipt: Receipt
    replaces: uuid.UUID | None


async def record(
    conn: asyncpg.Connection, customer_id: uuid.UUID, receipt_id: uuid.UUID
) -> Record | None:
    """One of the customer's ledger records by its receipt id; None for anyone else's."""
    row = await conn.fetchrow(RECORD, customer_id, receipt_id)
    if row is None:
        return None
    receipt = msgspec.convert(row["receipt"], Receipt)
    changes = receipt.state == "ConsentGiven" and row["before_state"] == "ConsentGiven"
    return Record(receipt=receipt, replaces=row["before_id"] if changes else None)


def entry_from_row(row: Row) -> LedgerEntry:
    return LedgerEntry(
        seq=row["seq"],
        recorded_at=row["recorded_at"],
        receipt=msgspec.convert(row["receipt"], Receipt),
        prev_hash=row["prev_hash"].hex(),
        hash=row["hash"].hex(),
    )


@dataclass(frozen=True)
class ChainFault:
    customer_id: uuid.UUID
    seq: int
    reason: str


CHAIN = """
SELECT seq, receipt_id, recorded_at, audience, state, receipt, mac_version, prev_hash, hash
FROM consent_ledger WHERE customer_id = $1 ORDER BY seq
"""
HEADS = "SELECT customer_id, ledger_seq, ledger_head FROM customers WHERE customer_id > $1 ORDER BY customer_id LIMIT $2"
ORPHANS = """
SELECT DISTINCT l.customer_id FROM consent_ledger l
LEFT JOIN customers c USING (customer_id) WHERE c.customer_id IS NULL
"""


async def verify_customer(
    conn: asyncpg.Connection,
    index: BlindIndex,
    customer_id: uuid.UUID,
    head_seq: int,
    head_hash: bytes | None,
    unverifiable: Counter[int] | None = None,
) -> ChainFault | None:
    """The first fault in one customer's chain, or None when it verifies.

    A record sealed under an index key that is no longer configured (an older version than the
    newest one configured) cannot be checked itself: it is counted in ``unverifiable`` by
    version, its links and columns are still checked, and so is the rest of the chain. A record
    claiming a version newer than every configured one is a fault.
    """
    prev_hash, expected_seq = GENESIS, 1
    for row in await conn.fetch(CHAIN, customer_id):
        if row["seq"] != expected_seq:
            return ChainFault(customer_id, expected_seq, "a record is missing")
        if row["prev_hash"] != prev_hash:
            return ChainFault(customer_id, row["seq"], "the link to the previous record is broken")
        version = row["mac_version"]
        if version in index.index.keys:
            digest = record_hash(
                index, version, customer_id, row["seq"], prev_hash, canonical(row["receipt"])
            )
            if digest != row["hash"]:
                return ChainFault(customer_id, row["seq"], "the record was altered")
        elif version > max(index.index.keys):
            return ChainFault(
                customer_id,
                row["seq"],
                f"the record claims index key v{version}, newer than any in PREFS_INDEX_KEY",
            )
        elif unverifiable is not None:
            unverifiable[version] += 1
        receipt = msgspec.convert(row["receipt"], Receipt)
        if (row["receipt_id"], row["recorded_at"], row["audience"], row["state"]) != (
            receipt.receipt_id,
            receipt.timestamp,
            receipt.audience,
            receipt.state,
        ):
            return ChainFault(
                customer_id, row["seq"], "the record's columns disagree with its receipt"
            )
        prev_hash, expected_seq = row["hash"], expected_seq + 1
    if expected_seq - 1 != head_seq or (head_seq and prev_hash != head_hash):
        return ChainFault(customer_id, expected_seq, "the chain does not end at the recorded head")
    return None


@dataclass(frozen=True)
class Verification:
    checked: int  # chains
    faults: list[ChainFault]
    unverifiable: dict[int, int]  # index-key version no longer configured → records sealed under it


async def verify_all(conn: asyncpg.Connection, index: BlindIndex, batch: int = 500) -> Verification:
    """Verify every customer's chain: how many were checked, the faults found, and how many
    records could not be checked because their index key is no longer configured."""
    faults: list[ChainFault] = []
    unverifiable: Counter[int] = Counter()
    checked, after = 0, uuid.UUID(int=0)
    while True:
        heads = await conn.fetch(HEADS, after, batch)
        if not heads:
            break
        for head in heads:
            fault = await verify_customer(
                conn,
                index,
                head["customer_id"],
                head["ledger_seq"],
                head["ledger_head"],
                unverifiable,
            )
            if fault is not None:
                faults.append(fault)
            checked += 1
        after = heads[-1]["customer_id"]
    for row in await conn.fetch(ORPHANS):
        faults.append(
            ChainFault(row["customer_id"], 0, "records exist for a customer who is not enrolled")
        )
    return Verification(checked, faults, dict(sorted(unverifiable.items())))
