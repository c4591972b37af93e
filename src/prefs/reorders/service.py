"""Reorders as the customer places, lists, cancels and confirms them.

Partners see and move theirs through prefs.partners; both sides write and read the row through
prefs.sealed_reorders, which keeps an encrypted snapshot of exactly what was disclosed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from msgspec import UNSET, UnsetType

from prefs import cursors, partner_refs
from prefs.crypto import DataKey, Vault
from prefs.customer_keys import data_key, lock_customer
from prefs.db import Row
from prefs.errors import Conflict, InvalidInput, LimitReached, NotFound
from prefs.events import ReorderCancelled
from prefs.grants import FIELD_ORDER, Field, partner_audience, partner_fields
from prefs.reorders.schemas import Reorder, ReorderCreate, ReorderList, ReorderStore
from prefs.sealed_preferences import GET as GET_PREFERENCE
from prefs.sealed_reorders import Snapshot, insert, open_snapshot

STORE_PREFIX = "store:"
# What a store sees of a reorder unless the customer adds their note: what finding or making the
# item needs.
STORE_FIELDS = ["product", "attributes"]
# Store reorders one customer may have waiting (requested) at once, across stores, by default
# (PREFS_STORE_WAITING_REORDERS).
MAX_WAITING_AT_STORES = 20
WAITING_AT_STORES = """
SELECT count(*) FROM reorders
WHERE customer_id = $1 AND store_id IS NOT NULL AND state = 'requested'
"""


def partner_id_of(fulfiller: str) -> uuid.UUID:
    """The partner a `partner:<id>` fulfiller names (its id in any letter case)."""
    try:
        return uuid.UUID(fulfiller.removeprefix("partner:"))
    except ValueError:
        raise InvalidInput(
            "fulfiller must be `store:<store id>` or `partner:<partner id>`."
        ) from None


PARTNER_EXISTS = "SELECT 1 FROM partners WHERE partner_id = $1 AND retired_at IS NULL"
# FOR SHARE: a store closing meanwhile waits for this reorder, or this reorder sees it closed
STORE = "SELECT name, closed_at FROM stores WHERE store_id = $1 FOR SHARE"
STORES = """
SELECT store_id, name, address, closed_at IS NOT NULL AS closed FROM stores
WHERE store_id = ANY($1::text[])
"""


async def open_store(conn: asyncpg.Connection, fulfiller: str) -> str:
    """The open store a `store:<id>` fulfiller names; 404 for a store that is not in the
    directory or has closed (a bare `store` never gets here: the schema refuses it)."""
    store_id = fulfiller.removeprefix(STORE_PREFIX)
    store = await conn.fetchrow(STORE, store_id)
    if store is None:
        raise NotFound(f"No store {store_id} in the directory: GET /v1/stores lists them.")
    if store["closed_at"] is not None:
        raise NotFound(f"{store['name']} has closed: choose another store (GET /v1/stores).")
    return store_id


async def stores_of(conn: asyncpg.Connection, rows: Sequence[Row]) -> dict[str, ReorderStore]:
    """The directory's entries for the stores these reorder rows are addressed to."""
    wanted = sorted({row["store_id"] for row in rows if row["store_id"] is not None})
    if not wanted:
        return {}
    return {
        row["store_id"]: ReorderStore(
            id=row["store_id"], name=row["name"], address=row["address"], closed=row["closed"]
        )
        for row in await conn.fetch(STORES, wanted)
    }


def reorder_view(
    row: Row, snap: Snapshot | None, stores: dict[str, ReorderStore] | None = None
) -> Reorder:
    return Reorder(
        id=row["reorder_id"],
        preference_id=row["preference_id"],
        fulfiller=row["fulfiller"],
        origin=row["origin"],
        quantity=row["quantity"],
        state=row["state"],
        fields=list(row["fields"]),
        item=snap,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        store=(stores or {}).get(row["store_id"]) if row["store_id"] else None,
    )


def _store_fields(asked: list[Field] | UnsetType) -> list[str]:
    """What the store may see: product and attributes, or what the customer chose, in order."""
    if isinstance(asked, UnsetType):
        return STORE_FIELDS
    if "product" not in asked:
        raise InvalidInput("A store needs the product to find or make it: include `product`.")
    return [field for field in FIELD_ORDER if field in asked]


async def views(
    conn: asyncpg.Connection, key: DataKey | None, rows: Sequence[Row]
) -> list[Reorder]:
    """Reorder rows as their customer sees them (``key``: the customer's data key)."""
    stores = await stores_of(conn, rows)
    return [reorder_view(row, open_snapshot(key, row), stores) for row in rows]


async def create_for_customer(
    conn: asyncpg.Connection,
    vault: Vault,
    customer_id: uuid.UUID,
    preference_id: uuid.UUID,
    data: ReorderCreate,
    max_waiting_at_stores: int = MAX_WAITING_AT_STORES,
) -> Reorder:
    """Reorder a preference from a store of the directory, or from a partner the customer
    granted consent to."""
    preference = await conn.fetchrow(GET_PREFERENCE, customer_id, preference_id)
    if preference is None:
        raise NotFound("No such preference.")
    partner_id: uuid.UUID | None = None
    preference_ref: uuid.UUID | None = None
    store_id: str | None = None
    fulfiller = data.fulfiller
    if fulfiller.startswith(STORE_PREFIX):
        fields = _store_fields(data.fields)
        store_id = await open_store(conn, fulfiller)
        await lock_customer(conn, customer_id)  # the count below holds until this commits
        if await conn.fetchval(WAITING_AT_STORES, customer_id) >= max_waiting_at_stores:
            raise LimitReached(
                f"You already have {max_waiting_at_stores} store reorders waiting to be "
                "accepted: cancel one, or wait for a store to accept one."
            )
    else:
        if data.fields is not UNSET:
            raise InvalidInput(
                "A partner sees what your consent to it allows: change that with "
                f"PUT /v1/me/consents/{fulfiller}, not in the reorder."
            )
        partner_id = partner_id_of(fulfiller)
        fulfiller = partner_audience(partner_id)  # as the grant names it
        if await conn.fetchval(PARTNER_EXISTS, partner_id) is None:
            raise NotFound("No such partner.")
        granted = await partner_fields(conn, customer_id, partner_id, preference_id)
        if granted is None:
            raise Conflict(
                "To reorder through this partner, first let it see this preference: "
                f"PUT /v1/me/consents/partner:{partner_id}."
            )
        fields = granted
        await partner_refs.ensure_ref(conn, vault.index, partner_id, customer_id)
        refs = await partner_refs.refs_for(conn, customer_id, partner_id, [preference_id])
        preference_ref = refs[preference_id]
    key = await data_key(conn, vault, customer_id)
    row, snap = await insert(
        conn,
        key,
        preference,
        fulfiller,
        partner_id,
        "customer",
        data.quantity,
        fields,
        preference_ref,
        store_id=store_id,
    )
    return reorder_view(row, snap, await stores_of(conn, [row]))


CUSTOMER_PAGE = """
SELECT reorder_id, preference_id, fulfiller, store_id, origin, quantity, state, fields,
       snapshot_ct, created_at, updated_at
FROM reorders
WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (created_at, reorder_id) < ($2, $3))
ORDER BY created_at DESC, reorder_id DESC LIMIT $4
"""


async def list_for_customer(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, limit: int, after: str | None
) -> ReorderList:
    """The customer's reorders, newest first."""
    at, ident = (
        cursors.open_time(vault.page_cursors, "reorders", customer_id, after)
        if after
        else (None, None)
    )
    rows = await conn.fetch(CUSTOMER_PAGE, customer_id, at, ident, limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    key = await data_key(conn, vault, customer_id) if rows else None
    items = await views(conn, key, rows)
    next_cursor = (
        cursors.seal_time(
            vault.page_cursors,
            "reorders",
            customer_id,
            rows[-1]["created_at"],
            rows[-1]["reorder_id"],
        )
        if more
        else None
    )
    return ReorderList(items=items, next=next_cursor)


CANCEL = """
UPDATE reorders SET state = 'cancelled', updated_at = now()
WHERE customer_id = $1 AND reorder_id = $2 AND state IN ('proposed', 'requested')
RETURNING reorder_id, preference_id, fulfiller, store_id, origin, quantity, state, fields,
          snapshot_ct, created_at, updated_at
"""
ONE = """
SELECT reorder_id, preference_id, fulfiller, store_id, origin, quantity, state, fields,
       snapshot_ct, created_at, updated_at
FROM reorders WHERE customer_id = $1 AND reorder_id = $2
"""


async def _moved(
    conn: asyncpg.Connection,
    move: str,
    customer_id: uuid.UUID,
    reorder_id: uuid.UUID,
    to: str,
    refusal: str,
) -> Row:
    """The reorder after ``move`` took it to ``to``, or as it is if it is there already; 404 for
    none, 409 (``This reorder is <state> and <refusal>.``) when the move does not apply."""
    row = await conn.fetchrow(move, customer_id, reorder_id)
    if row is None:
        row = await conn.fetchrow(ONE, customer_id, reorder_id)
        if row is None:
            raise NotFound("No such reorder.")
        if row["state"] != to:
            raise Conflict(f"This reorder is {row['state']} and {refusal}.")
    return row


async def cancel(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, reorder_id: uuid.UUID
) -> Reorder:
    """Cancel a reorder nobody has accepted yet (declining a partner's proposal is the same);
    cancelling twice is a no-op."""
    row = await _moved(
        conn, CANCEL, customer_id, reorder_id, "cancelled", "can no longer be cancelled"
    )
    key = await data_key(conn, vault, customer_id)
    return reorder_view(row, open_snapshot(key, row), await stores_of(conn, [row]))


PROPOSAL = """
SELECT partner_id, preference_id FROM reorders
WHERE customer_id = $1 AND reorder_id = $2 AND state = 'proposed'
FOR UPDATE
"""
CONFIRM = """
UPDATE reorders SET state = 'requested', updated_at = now()
WHERE customer_id = $1 AND reorder_id = $2 AND state = 'proposed'
RETURNING reorder_id, preference_id, fulfiller, store_id, origin, quantity, state, fields,
          snapshot_ct, created_at, updated_at
"""


async def confirm(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, reorder_id: uuid.UUID
) -> Reorder:
    """The customer confirms a partner's proposal (proposed → requested); repeating is a no-op.

    A proposal the partner may no longer see cannot be confirmed.
    """
    async with conn.transaction():
        proposal = await conn.fetchrow(PROPOSAL, customer_id, reorder_id)
        if proposal is not None and (
            await partner_fields(
                conn, customer_id, proposal["partner_id"], proposal["preference_id"]
            )
            is None
        ):
            raise Conflict(
                "This partner may no longer see this preference: grant it again to confirm, "
                "or decline the proposal."
            )
        row = await _moved(
            conn, CONFIRM, customer_id, reorder_id, "requested", "cannot be confirmed"
        )
    key = await data_key(conn, vault, customer_id)
    return reorder_view(row, open_snapshot(key, row), await stores_of(conn, [row]))


CLOSE_WAITING = """
UPDATE reorders SET state = 'cancelled', updated_at = now()
WHERE customer_id = $1 AND partner_id = $2 AND state IN ('proposed', 'requested')
RETURNING reorder_id, preference_id, quantity, origin
"""
CLOSE_WAITING_OUTSIDE_GRANT = """
UPDATE reorders r SET state = 'cancelled', updated_at = now()
FROM consents g
WHERE r.customer_id = $1 AND r.partner_id = $2 AND r.state IN ('proposed', 'requested')
  AND g.customer_id = r.customer_id AND g.audience = $3
  AND g.preference_ids IS NOT NULL AND NOT r.preference_id = ANY(g.preference_ids)
RETURNING r.reorder_id, r.preference_id, r.quantity, r.origin
"""


async def cancel_requested_for_partner(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID
) -> list[ReorderCancelled]:
    """After consent to a partner ends, its not-yet-accepted reorders are cancelled."""
    rows = await conn.fetch(CLOSE_WAITING, customer_id, partner_id)
    return [ReorderCancelled(**dict(row)) for row in rows]


async def cancel_outside_grant(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID
) -> list[ReorderCancelled]:
    """After a grant to a partner changed, its not-yet-accepted reorders of preferences the
    grant no longer covers are cancelled (narrowed fields only narrow what the partner sees)."""
    rows = await conn.fetch(
        CLOSE_WAITING_OUTSIDE_GRANT, customer_id, partner_id, partner_audience(partner_id)
    )
    return [ReorderCancelled(**dict(row)) for row in rows]
