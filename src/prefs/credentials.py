"""API keys for tills, partners and insights: shown once, stored as hashes, revocable."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg

from prefs.crypto import api_key_hash
from prefs.errors import InvalidInput, NotFound

Kind = Literal["pos", "partner", "insights"]
PREFIX = {"pos": "pos", "partner": "ptn", "insights": "ins"}


@dataclass(frozen=True)
class Credential:
    id: uuid.UUID
    kind: str
    name: str
    store: str | None
    partner_id: uuid.UUID | None
    created_at: datetime
    revoked_at: datetime | None


def new_api_key(kind: Kind) -> str:
    return f"{PREFIX[kind]}_{secrets.token_urlsafe(32)}"


STORE = "SELECT closed_at FROM stores WHERE store_id = $1 FOR SHARE"
INSERT_PARTNER = "INSERT INTO partners (partner_id, name, description) VALUES ($1, $2, $3)"
INSERT = """
INSERT INTO credentials (credential_id, kind, key_hash, display_name, store, partner_id)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING credential_id AS id, kind, display_name AS name, store, partner_id, created_at, revoked_at
"""


async def create(
    conn: asyncpg.Connection,
    kind: Kind,
    name: str,
    *,
    store: str | None = None,
    partner_id: uuid.UUID | None = None,
    description: str | None = None,
) -> tuple[Credential, str]:
    """A new credential and its API key (the key is never stored, only its hash).

    A partner credential without ``partner_id`` creates the partner itself, named ``name``; a
    till's names an open store of the directory.
    """
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name must be 1 to 100 characters.")
    if (kind == "pos") != (store is not None):
        raise InvalidInput("a till key needs --store, and only a till key takes one.")
    async with conn.transaction():
        if store is not None:
            found = await conn.fetchrow(STORE, store)
            if found is None:
                raise NotFound(
                    f"No store {store} in the directory: add it first with `prefs stores add`."
                )
            if found["closed_at"] is not None:
                raise InvalidInput(f"Store {store} is closed: a till key needs an open store.")
        if kind == "partner" and partner_id is None:
            partner_id = uuid.uuid4()
            await conn.execute(INSERT_PARTNER, partner_id, name, description)
        api_key = new_api_key(kind)
        row = await conn.fetchrow(
            INSERT, uuid.uuid4(), kind, api_key_hash(api_key), name, store, partner_id
        )
        assert row is not None
        return Credential(**dict(row)), api_key


LIST = """
SELECT credential_id AS id, kind, display_name AS name, store, partner_id, created_at, revoked_at
FROM credentials ORDER BY created_at, credential_id
"""


async def list_all(conn: asyncpg.Connection) -> list[Credential]:
    return [Credential(**dict(row)) for row in await conn.fetch(LIST)]


REVOKE = """
UPDATE credentials SET revoked_at = coalesce(revoked_at, now()) WHERE credential_id = $1
RETURNING credential_id AS id, kind, display_name AS name, store, partner_id, created_at, revoked_at
"""


async def revoke(conn: asyncpg.Connection, credential_id: uuid.UUID) -> Credential:
    """Revoke a key: refused on its very next request (keys are checked on every request)."""
    row = await conn.fetchrow(REVOKE, credential_id)
    if row is None:
        raise NotFound("No such credential.")
    return Credential(**dict(row))


def live_key(credential: str, key_hash: str, kind: str) -> str:
    """The one rule for an API key, as SQL: the ``credential`` row (an alias) is the live key of
    ``kind`` whose hash is ``key_hash``. The guards' check (verify) and the till lookup's own
    (prefs.pos, inside its single statement) both use it."""
    return (
        f"{credential}.key_hash = {key_hash} AND {credential}.kind = {kind} "
        f"AND {credential}.revoked_at IS NULL"
    )


VERIFY = f"""
SELECT credential_id AS id, kind, display_name AS name, store, partner_id, created_at, revoked_at
FROM credentials c WHERE {live_key("c", "$1", "$2")}
"""


async def verify(conn: asyncpg.Connection, kind: Kind, api_key: str) -> Credential | None:
    """The live credential behind an API key of ``kind``, or None."""
    row = await conn.fetchrow(VERIFY, api_key_hash(api_key), kind)
    return None if row is None else Credential(**dict(row))
