"""Stores: the directory (kept by the operator, read by customers) and each store's queue of
reorders, which its tills read and move on.

A store reorder is the customer's own request: the store sees the snapshot the customer chose
when placing it, with no grant needed, for as long as it has the reorder to do, and every
reading is in the customer's access log.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from prefs import cursors, disclosures, feeds
from prefs.credentials import Credential
from prefs.crypto import DataKey, Vault
from prefs.db import Row
from prefs.errors import Conflict, InvalidInput, NotFound
from prefs.sealed_reorders import Snapshot, open_snapshot, row_key
from prefs.stores.schemas import (
    Store,
    StoreDirectory,
    StoreEntry,
    StoreQueue,
    StoreRecord,
    StoreReorder,
)

# -- the directory ---------------------------------------------------------------------------

DIRECTORY = r"""
SELECT store_id AS id, name, address FROM stores
WHERE closed_at IS NULL
  AND ($1::text IS NULL
       OR store_id ILIKE $1 || '%' ESCAPE '\'
       OR name ILIKE '%' || $1 || '%' ESCAPE '\'
       OR address ILIKE '%' || $1 || '%' ESCAPE '\')
  AND ($2::text IS NULL
       OR (name, store_id) > ((SELECT name FROM stores WHERE store_id = $2), $2))
ORDER BY name, store_id
LIMIT $3
"""
DIRECTORY_CURSOR = uuid.UUID(int=0)  # one directory for every customer


def _like(words: str) -> str:
    """``words`` as a LIKE pattern that matches them literally."""
    return words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def directory(
    conn: asyncpg.Connection, vault: Vault, q: str | None, limit: int, after: str | None
) -> StoreDirectory:
    """Open stores by name, optionally those whose id starts with ``q`` or whose name or address
    holds it; ``after`` is the previous page's ``next``."""
    last = (
        cursors.open_text(vault.page_cursors, "stores", DIRECTORY_CURSOR, after) if after else None
    )
    search = _like(q.strip()) if q and q.strip() else None
    rows = await conn.fetch(DIRECTORY, search, last, limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    return StoreDirectory(
        items=[Store(**dict(row)) for row in rows],
        next=cursors.seal_text(vault.page_cursors, "stores", DIRECTORY_CURSOR, rows[-1]["id"])
        if more
        else None,
    )


RECORD = "store_id AS id, name, address, created_at, closed_at"
ADD = f"""
INSERT INTO stores (store_id, name, address) VALUES ($1, $2, $3)
ON CONFLICT (store_id) DO NOTHING
RETURNING {RECORD}
"""
ALL = f"SELECT {RECORD} FROM stores ORDER BY store_id"
RENAME = f"""
UPDATE stores SET name = $2, address = CASE WHEN $4 THEN $3 ELSE address END
WHERE store_id = $1 RETURNING {RECORD}
"""
CLOSE = f"""
UPDATE stores SET closed_at = coalesce(closed_at, now()) WHERE store_id = $1 RETURNING {RECORD}
"""
REOPEN = f"UPDATE stores SET closed_at = NULL WHERE store_id = $1 RETURNING {RECORD}"
STILL_OPEN = """
SELECT (SELECT count(*) FROM reorders
        WHERE store_id = $1 AND state IN ('requested', 'accepted', 'ready')) AS reorders,
       (SELECT count(*) FROM credentials
        WHERE store = $1 AND kind = 'pos' AND revoked_at IS NULL) AS till_keys
"""


def entry(store_id: str, name: str, address: str | None = None) -> StoreEntry:
    """A store as the operator typed it, checked (400 naming what is wrong)."""
    try:
        return msgspec.convert(
            {"id": store_id, "name": name.strip(), "address": (address or "").strip() or None},
            StoreEntry,
        )
    except msgspec.ValidationError as error:
        raise InvalidInput(
            f"{error} (a store id is 1 to 64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit; a name 1 to 100 characters)".replace("Object", "store", 1)
        ) from None


async def add(conn: asyncpg.Connection, store: StoreEntry) -> StoreRecord:
    """Add a store to the directory; 409 when its id is taken."""
    row = await conn.fetchrow(ADD, store.id, store.name, store.address)
    if row is None:
        raise Conflict(f"Store {store.id} is already in the directory.")
    return StoreRecord(**dict(row))


async def list_all(conn: asyncpg.Connection) -> list[StoreRecord]:
    """Every store, closed ones too, by id."""
    return [StoreRecord(**dict(row)) for row in await conn.fetch(ALL)]


async def rename(conn: asyncpg.Connection, store: StoreEntry, *, new_address: bool) -> StoreRecord:
    """Give a store a new name (and, with ``new_address``, a new address or none)."""
    row = await conn.fetchrow(RENAME, store.id, store.name, store.address, new_address)
    if row is None:
        raise NotFound(f"No store {store.id} in the directory.")
    return StoreRecord(**dict(row))


async def close(conn: asyncpg.Connection, store_id: str) -> tuple[StoreRecord, int, int]:
    """Close a store: customers no longer see it or reorder from it. Its tills keep working the
    reorders it still has; returns how many there are and how many till keys are still live."""
    async with conn.transaction():
        row = await conn.fetchrow(CLOSE, store_id)
        if row is None:
            raise NotFound(f"No store {store_id} in the directory.")
        still = await conn.fetchrow(STILL_OPEN, store_id)
    assert still is not None
    return StoreRecord(**dict(row)), still["reorders"], still["till_keys"]


async def reopen(conn: asyncpg.Connection, store_id: str) -> StoreRecord:
    """Open a closed store again (closing by mistake is undone); a no-op for an open one."""
    row = await conn.fetchrow(REOPEN, store_id)
    if row is None:
        raise NotFound(f"No store {store_id} in the directory.")
    return StoreRecord(**dict(row))


# -- the store's queue -----------------------------------------------------------------------

# What the store has to do: it sees the reorder's snapshot only in these states.
TO_DO = ("requested", "accepted", "ready")
# (from, to) moves a store's till may make; repeating the current state is a no-op.
STORE_MOVES = {
    ("requested", "accepted"),
    ("accepted", "ready"),
    ("ready", "collected"),
    ("requested", "declined"),
    ("accepted", "declined"),
    ("ready", "declined"),
}


def _queue_owner(store_id: str) -> uuid.UUID:
    """Whose list a queue cursor belongs to: the store (any of its tills may go on with it)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"prefs:store:{store_id}")


QUEUE_CURSOR, QUEUE_CURSOR_BEFORE = "store-queue-position", "store-queue"


def encode_queue_cursor(vault: Vault, store_id: str, position: int) -> str:
    """The store's opaque position in its queue."""
    return cursors.seal_position(vault.page_cursors, QUEUE_CURSOR, _queue_owner(store_id), position)


def decode_queue_cursor(vault: Vault, store_id: str, cursor: str | None) -> int:
    """The position a queue cursor holds; 400 for one this store was not given, 410 for one the
    previous release gave it (by transaction id)."""
    return cursors.open_position(
        vault.page_cursors,
        QUEUE_CURSOR,
        _queue_owner(store_id),
        cursor,
        retired=QUEUE_CURSOR_BEFORE,
    )


# Each reorder appears when it is placed and again whenever its state changes, at a new position
# in the store's queue (prefs.feeds); these are the reorders of a page, by customer and id.
QUEUE = """
SELECT r.customer_id, r.reorder_id, r.preference_id, r.quantity, r.state, r.fields,
       r.snapshot_ct, r.created_at, r.updated_at, r.fulfiller, r.feed_position,
       k.generation, k.wrapped
FROM reorders r
LEFT JOIN customer_keys k ON k.customer_id = r.customer_id
WHERE r.customer_id = ANY($1::uuid[]) AND r.reorder_id = ANY($2::uuid[])
"""


def _store_view(row: Row, item: Snapshot | None = None) -> StoreReorder:
    return StoreReorder(
        id=row["reorder_id"],
        quantity=row["quantity"],
        state=row["state"],
        fields=list(row["fields"]) if item is not None else [],
        item=item,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def queue(
    conn: asyncpg.Connection, vault: Vault, till: Credential, after: str | None, limit: int
) -> StoreQueue:
    """The next changes in the till's store's queue, oldest first; every snapshot shown is in its
    customer's access log."""
    assert till.store is not None
    start = decode_queue_cursor(vault, till.store, after)
    async with conn.transaction():
        rows, position = await feeds.page(conn, feeds.store(till.store), start, limit, QUEUE)
        items, disclosed = [], []
        keys: dict[uuid.UUID, DataKey] = {}  # each customer's, unwrapped once per page
        for row in rows:
            snap = None
            if row["state"] in TO_DO and row["wrapped"] is not None:
                snap = open_snapshot(row_key(vault, keys, row), row)
            if snap is not None:
                disclosed.append((row["customer_id"], [row["preference_id"]], list(row["fields"])))
            items.append(_store_view(row, snap))
        await disclosures.record(
            conn, till, "reorder", "reorder", disclosed, vault=vault, keys=keys
        )
    same = after if after and position == start else None  # nothing new: the same cursor
    return StoreQueue(items=items, next=same or encode_queue_cursor(vault, till.store, position))


FOR_STORE = """
SELECT customer_id, reorder_id, quantity, state, fields, created_at, updated_at
FROM reorders WHERE customer_id = $3 AND reorder_id = $1 AND store_id = $2
FOR UPDATE
"""
MOVE = """
UPDATE reorders SET state = $3, updated_at = now(),
       accepted_at = CASE WHEN $3 = 'accepted' THEN now() ELSE accepted_at END
WHERE customer_id = $1 AND reorder_id = $2
RETURNING customer_id, reorder_id, quantity, state, fields, created_at, updated_at
"""


async def set_status(
    conn: asyncpg.Connection, till: Credential, reorder_id: uuid.UUID, state: str
) -> StoreReorder:
    """Move one of the store's reorders on (requested → accepted → ready → collected, or
    declined); repeating the current state is a no-op. 404 for another store's reorder. The
    answer carries no item: the queue shows it."""
    assert till.store is not None
    async with conn.transaction():
        customer_id = await feeds.customer_of(conn, feeds.store(till.store), reorder_id)
        row = (
            None
            if customer_id is None
            else await conn.fetchrow(FOR_STORE, reorder_id, till.store, customer_id)
        )
        if row is None:
            raise NotFound("No such reorder for this store.")
        if row["state"] == state:
            return _store_view(row)
        if (row["state"], state) not in STORE_MOVES:
            raise Conflict(f"A {row['state']} reorder cannot become {state}.")
        moved = await conn.fetchrow(MOVE, row["customer_id"], reorder_id, state)
        assert moved is not None
        return _store_view(moved)
