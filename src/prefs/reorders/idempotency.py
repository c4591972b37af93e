"""Idempotency-Key handling for reorder-creating requests.

The key is claimed by an INSERT inside the same transaction that creates the reorder, so a
concurrent duplicate waits for the first to commit and then replays its stored answer: exactly
one reorder, whatever the timing. Stored answers are encrypted under the customer's data key.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from prefs.crypto import Vault
from prefs.customers.service import data_key
from prefs.errors import Conflict, IdempotencyMismatch, InvalidInput

KEY_PATTERN = re.compile(r"[\x21\x23-\x7e][\x21-\x7e]{0,199}")  # a leading " starts the quoted form
# The IETF draft (-07) makes the header a Structured Field string (RFC 8941): "…", in which
# only \" and \\ are escapes. Both forms name the same key: "abc" is the key abc.
QUOTED_KEY_PATTERN = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x22\x5c]){1,200})"')
HEADER_PATTERN = f"^({KEY_PATTERN.pattern}|{QUOTED_KEY_PATTERN.pattern})$"
_UNESCAPE = re.compile(r"\\(.)")


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


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    replayed: bool


FORGET_EXPIRED = (
    "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND expires_at <= now()"
)
CLAIM = """
INSERT INTO idempotency_keys (owner, key, request_hash, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (owner, key) DO NOTHING RETURNING key
"""
EXISTING = """
SELECT request_hash, customer_id, status, response_ct FROM idempotency_keys
WHERE owner = $1 AND key = $2
"""
STORE = """
UPDATE idempotency_keys SET customer_id = $3, status = $4, response_ct = $5
WHERE owner = $1 AND key = $2
"""

Create = Callable[[], Awaitable[tuple[uuid.UUID, int, bytes]]]
MayReplay = Callable[[uuid.UUID], Awaitable[None]]


async def once(
    conn: asyncpg.Connection,
    vault: Vault,
    owner: str,
    key: str,
    fingerprint: bytes,
    ttl_seconds: int,
    create: Create,
    may_replay: MayReplay | None = None,
) -> Answer:
    """Run ``create`` once per (owner, key); later calls get the first answer back.

    ``may_replay`` (given the customer) raises when the stored answer may no longer be shown,
    e.g. to a partner whose consent was withdrawn since.
    """
    async with conn.transaction():
        await conn.execute(FORGET_EXPIRED, owner, key)
        if await conn.fetchval(CLAIM, owner, key, fingerprint, float(ttl_seconds)) is None:
            row = await conn.fetchrow(EXISTING, owner, key)
            if row is None or row["status"] is None:
                raise Conflict("A request with this Idempotency-Key is still being processed.")
            if row["request_hash"] != fingerprint:
                raise IdempotencyMismatch("This Idempotency-Key was used with a different request.")
            if may_replay is not None:
                await may_replay(row["customer_id"])
            customer_key = await data_key(conn, vault, row["customer_id"])
            body = customer_key.decrypt(
                row["response_ct"], "idempotency_keys", "response", f"{owner}/{key}"
            )
            return Answer(status=row["status"], body=body, replayed=True)
        customer_id, status, body = await create()
        customer_key = await data_key(conn, vault, customer_id)
        sealed = customer_key.encrypt(body, "idempotency_keys", "response", f"{owner}/{key}")
        await conn.execute(STORE, owner, key, customer_id, status, sealed)
        return Answer(status=status, body=body, replayed=False)


PURGE = "DELETE FROM idempotency_keys WHERE expires_at <= now()"


async def purge_expired(conn: asyncpg.Connection) -> int:
    """Forget idempotency records past their window; returns how many."""
    result: str = await conn.execute(PURGE)
    return int(result.split()[-1])
