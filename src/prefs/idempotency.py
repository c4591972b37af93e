"""Idempotency-Key handling for reorder-creating requests.

The key is claimed by an INSERT inside the same transaction that creates the reorder, so a
concurrent duplicate waits for the first to commit and then replays its stored answer: exactly
one reorder, whatever the timing. Stored answers are encrypted under the customer's data key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from prefs.crypto import BlindIndex, Vault
from prefs.customer_keys import data_key
from prefs.errors import Conflict, IdempotencyMismatch, InvalidInput

KEY_PATTERN = re.compile(r"[\x21\x23-\x7e][\x21-\x7e]{0,199}")  # a leading " starts the quoted form
# The IETF draft (-07) makes the header a Structured Field string (RFC 8941): "…", in which
# only \" and \\ are escapes. Both forms name the same key: "abc" is the key abc.
QUOTED_KEY_PATTERN = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x22\x5c]){1,200})"')
HEADER_PATTERN = f"^({KEY_PATTERN.pattern}|{QUOTED_KEY_PATTERN.pattern})$"
_UNESCAPE = re.compile(r"\\(.)")
PURPOSE = "idempotency-key"


def check_key(key: str | None) -> str:
    """The key an Idempotency-Key header names, bare (abc) or as a quoted sf-string ("abc")."""
    if key is None:
        raise InvalidInput(
            "Send an Idempotency-Key header (any unique string up to 200 characters)."
        )
    if quoted := QUOTED_KEY_PATTERN.fullmatch(key):
        return _UNESCAPE.sub(r"\1", quoted[1])
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidInput(
            'Idempotency-Key must be 1 to 200 printable ASCII characters, bare or quoted ("…").'
        )
    return key


def request_fingerprint(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()


def keyed_fingerprint(index: BlindIndex, fingerprint: bytes, version: int | None) -> bytes:
    """What is stored of a request: a keyed digest, since a body may hold a loyalty card number,
    which an unkeyed hash would give away to anyone trying the few numbers a card can be."""
    if version is None or version not in index.versions:
        return b""  # a version no longer configured: its records cannot match
    return index.digest("idempotency-request", fingerprint, version)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    replayed: bool


# Keys are stored only as keyed hashes (a client may put an e-mail address in one): the
# BlindIndex digest of owner and key under the primary index key version (key_version); the
# stored answer's associated data names that hash, never the key.
FORGET_EXPIRED = "DELETE FROM idempotency_keys WHERE owner = $1 AND key = ANY($2::text[]) AND expires_at <= now()"
CLAIM = """
INSERT INTO idempotency_keys (owner, key, key_version, request_hash, expires_at)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
ON CONFLICT (owner, key) DO NOTHING RETURNING key
"""
# the first stored under any configured version, primary first
EXISTING = """
SELECT key, key_version, request_hash, customer_id, status, response_ct FROM idempotency_keys
WHERE owner = $1 AND key = ANY($2::text[])
ORDER BY array_position($2::text[], key)
LIMIT 1
"""
STORE = """
UPDATE idempotency_keys SET customer_id = $3, status = $4, response_ct = $5
WHERE owner = $1 AND key = $2
"""

Create = Callable[[], Awaitable[tuple[uuid.UUID, int, bytes]]]
Replay = Callable[[uuid.UUID, bytes], Awaitable[bytes]]


def stored_keys(index: BlindIndex, owner: str, key: str) -> dict[int, str]:
    """The key as stored under each index key version, primary first: a keyed hash."""
    value = owner.encode() + b"\x00" + key.encode()
    return {
        version: base64.urlsafe_b64encode(index.digest(PURPOSE, value, version)).decode()
        for version in index.versions
    }


def answer_place(owner: str, stored_key: str) -> str:
    """The row part of a stored answer's associated data."""
    return f"{owner}/{stored_key}"


async def once(
    conn: asyncpg.Connection,
    vault: Vault,
    owner: str,
    key: str,
    fingerprint: bytes,
    ttl_seconds: int,
    create: Create,
    replay: Replay | None = None,
) -> Answer:
    """Run ``create`` once per (owner, key); later calls get the first answer back.

    ``replay`` (given the customer and the first answer) shows the answer again as it may be
    shown now, or raises: e.g. to a partner whose consent was narrowed or withdrawn since.
    """
    hashes = stored_keys(vault.index, owner, key)
    primary = hashes[vault.index.primary]
    every = list(hashes.values())
    async with conn.transaction():
        await conn.execute(FORGET_EXPIRED, owner, every)
        # a key first used under an older index key version (during a rotation) replays too
        row = await conn.fetchrow(EXISTING, owner, every[1:]) if len(every) > 1 else None
        if row is None:
            claimed = await conn.fetchval(
                CLAIM,
                owner,
                primary,
                vault.index.primary,
                keyed_fingerprint(vault.index, fingerprint, vault.index.primary),
                float(ttl_seconds),
            )
            if claimed is not None:
                customer_id, status, body = await create()
                customer_key = await data_key(conn, vault, customer_id)
                sealed = customer_key.encrypt(
                    body, "idempotency_keys", "response", answer_place(owner, primary)
                )
                await conn.execute(STORE, owner, primary, customer_id, status, sealed)
                return Answer(status=status, body=body, replayed=False)
            row = await conn.fetchrow(EXISTING, owner, [primary])
        if row is None or row["status"] is None:
            raise Conflict("A request with this Idempotency-Key is still being processed.")
        if row["request_hash"] not in (
            keyed_fingerprint(vault.index, fingerprint, row["key_version"]),
            fingerprint,  # stored unkeyed before the keyed fingerprint: gone within a day
        ):
            raise IdempotencyMismatch("This Idempotency-Key was used with a different request.")
        customer_key = await data_key(conn, vault, row["customer_id"])
        body = customer_key.decrypt(
            row["response_ct"], "idempotency_keys", "response", answer_place(owner, row["key"])
        )
        if replay is not None:
            body = await replay(row["customer_id"], body)
        return Answer(status=row["status"], body=body, replayed=True)


PURGE = "DELETE FROM idempotency_keys WHERE expires_at <= now()"


async def purge_expired(conn: asyncpg.Connection) -> int:
    """Forget idempotency records past their window; returns how many."""
    result: str = await conn.execute(PURGE)
    return int(result.split()[-1])


# The backfill: keys stored verbatim before revision 0009 become keyed hashes, their stored
# answers resealed under associated data that names the hash (expired ones are forgotten).
LEGACY = """
SELECT i.owner, i.key, i.customer_id, i.response_ct, i.expires_at <= now() AS expired,
       k.generation, k.wrapped
FROM idempotency_keys i LEFT JOIN customer_keys k USING (customer_id)
WHERE i.key_version IS NULL
LIMIT $1
FOR UPDATE OF i SKIP LOCKED
"""
FORGET = "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2"
# (a key used again since the deploy already has its hashed record: the old one is forgotten)
REKEY = """
UPDATE idempotency_keys SET key = $3, key_version = $4, response_ct = $5
WHERE owner = $1 AND key = $2
  AND NOT EXISTS (SELECT FROM idempotency_keys WHERE owner = $1 AND key = $3)
"""


async def hash_legacy_keys(conn: asyncpg.Connection, vault: Vault, batch: int = 500) -> int:
    """Replace every Idempotency-Key stored verbatim by its keyed hash; returns how many were
    handled. One transaction per batch, online, safe to run again. A record that cannot be kept
    (expired, unfinished, or of a customer since erased) is forgotten."""
    handled = 0
    version = vault.index.primary
    while True:
        async with conn.transaction():
            rows = await conn.fetch(LEGACY, batch)
            for row in rows:
                owner, key = row["owner"], row["key"]
                if row["expired"] or row["response_ct"] is None or row["wrapped"] is None:
                    await conn.execute(FORGET, owner, key)
                    continue
                customer_key = vault.envelope.unwrap(
                    row["customer_id"], row["generation"], row["wrapped"]
                )
                body = customer_key.decrypt(
                    row["response_ct"], "idempotency_keys", "response", answer_place(owner, key)
                )
                hashed = stored_keys(vault.index, owner, key)[version]
                resealed = customer_key.encrypt(
                    body, "idempotency_keys", "response", answer_place(owner, hashed)
                )
                if await conn.execute(REKEY, owner, key, hashed, version, resealed) == "UPDATE 0":
                    await conn.execute(FORGET, owner, key)
        handled += len(rows)
        if not rows:
            return handled
