"""A customer's preferences: encrypted content, plaintext order and status, optimistic versions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
import msgspec
from msgspec import UNSET

from prefs import product_status
from prefs.crypto import DataKey, Vault
from prefs.customer_keys import data_key, lock_customer
from prefs.db import Row
from prefs.errors import InvalidInput, LimitReached, NotFound, PreconditionFailed
from prefs.events import PreferencesChanged, follow
from prefs.preferences.schemas import (
    MAX_PREFERENCES,
    Preference,
    PreferenceCreate,
    PreferenceUpdate,
    ProductPatch,
)
from prefs.product_status import overlaid
from prefs.products import MAX_ATTRIBUTES, Product
from prefs.sealed_preferences import (
    COLUMNS,
    CONTENT,
    GET,
    SEALED_NONCE,
    UNINDEXED,
    Content,
    open_content,
    open_purchases,
    open_sealed,
    seal,
    seal_purchases,
    written,
)


def _opened(key: DataKey, row: Row) -> Preference:
    """A preference row opened, with the status its customer stored."""
    history = open_purchases(key, row)
    content = open_content(key, row)
    return Preference(
        id=row["preference_id"],
        product=content.product,
        attributes=content.attributes,
        note=content.note,
        rank=row["rank"],
        status=row["status"],
        purchases=history.purchases,
        last_purchased_on=history.last_purchased_on,
        source=content.source,
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def _shown(conn: asyncpg.Connection, key: DataKey, rows: Sequence[Row]) -> list[Preference]:
    """Preference rows as their customer reads them: the catalogue's status where it knows the
    SKU (prefs.product_status)."""
    preferences = [_opened(key, row) for row in rows]
    catalogue = await product_status.of(conn, (p.product.sku for p in preferences))
    for preference in preferences:
        preference.status = overlaid(preference.status, preference.product.sku, catalogue)
        if preference.product.sku in catalogue:
            preference.status_source = "catalogue"
    return preferences


async def _preference(conn: asyncpg.Connection, key: DataKey, row: Row) -> Preference:
    [preference] = await _shown(conn, key, [row])
    return preference


LIST = f"SELECT {COLUMNS} FROM preferences WHERE customer_id = $1 ORDER BY rank"
GET_FOR_UPDATE = GET + " FOR UPDATE"
COUNT = "SELECT count(*) FROM preferences WHERE customer_id = $1"


async def list_preferences(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID
) -> list[Preference]:
    """Every preference of the customer, in the customer's own order."""
    rows = await conn.fetch(LIST, customer_id)
    if not rows:
        return []
    key = await data_key(conn, vault, customer_id)
    return await _shown(conn, key, rows)


async def get_preference(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, preference_id: uuid.UUID
) -> Preference:
    row = await conn.fetchrow(GET, customer_id, preference_id)
    if row is None:
        raise NotFound("No such preference.")
    return await _preference(conn, await data_key(conn, vault, customer_id), row)


SHIFT_DOWN_FROM = "UPDATE preferences SET rank = rank + 1 WHERE customer_id = $1 AND rank >= $2"
INSERT = f"""
INSERT INTO preferences (customer_id, preference_id, rank, status, purchases_ct, sealed,
                         product_ct, attributes_ct, note_ct, source_ct, sku_index, sku_index_of)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {COLUMNS}
"""


async def create_preference(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, data: PreferenceCreate
) -> Preference:
    """Add a preference at ``rank`` (default: last), moving the ones below it down."""
    async with conn.transaction():
        await lock_customer(conn, customer_id)
        count: int = await conn.fetchval(COUNT, customer_id)
        if count >= MAX_PREFERENCES:
            raise LimitReached(f"A customer keeps at most {MAX_PREFERENCES} preferences.")
        rank = min(data.rank or count + 1, count + 1)
        if rank <= count:
            await conn.execute(SHIFT_DOWN_FROM, customer_id, rank)
        sent = None if data.status is UNSET else data.status
        status = await product_status.kept_status(conn, data.product.sku, sent)
        key = await data_key(conn, vault, customer_id)
        pid = uuid.uuid4()
        row = await conn.fetchrow(
            INSERT,
            customer_id,
            pid,
            rank,
            status,
            seal_purchases(key, pid, data.purchases, data.last_purchased_on),
            *written(key, vault.index, pid, Content(data.product, data.attributes, data.note)),
        )
        assert row is not None
        await follow(conn, vault, PreferencesChanged(customer_id))
        return await _preference(conn, key, row)


MOVE_UP = """UPDATE preferences SET rank = rank + 1
             WHERE customer_id = $1 AND rank >= $2 AND rank < $3"""
MOVE_DOWN = """UPDATE preferences SET rank = rank - 1
               WHERE customer_id = $1 AND rank > $2 AND rank <= $3"""
UPDATE = f"""
UPDATE preferences SET rank = $3, status = $4, purchases_ct = $5, purchases = NULL,
       last_purchased_on = NULL, sealed = $6, product_ct = $7, attributes_ct = $8,
       note_ct = $9, source_ct = $10, sku_index = $11, sku_index_of = $12,
       version = version + 1, updated_at = now()
WHERE customer_id = $1 AND preference_id = $2
RETURNING {COLUMNS}
"""


def _check_version(row: Row, expected: int | None) -> None:
    if expected is not None and row["version"] != expected:
        raise PreconditionFailed(
            f"The preference changed since you read it: it is now at version {row['version']}.",
            current_version=row["version"],
        )


async def _move(conn: asyncpg.Connection, customer_id: uuid.UUID, old: int, new: int) -> None:
    if new < old:
        await conn.execute(MOVE_UP, customer_id, new, old)
    elif new > old:
        await conn.execute(MOVE_DOWN, customer_id, old, new)


def patched_product(product: Product, patch: ProductPatch) -> Product:
    """The product with a merge patch applied (RFC 7396): members sent replace, null removes."""
    changes = {
        name: value for name, value in msgspec.structs.asdict(patch).items() if value is not UNSET
    }
    return msgspec.structs.replace(product, **changes)


def patched_attributes(
    attributes: dict[str, str], patch: dict[str, str | None] | None
) -> dict[str, str]:
    """The attributes with a merge patch applied (RFC 7396): a value sent replaces, null removes
    that attribute, and null for them all removes every one."""
    if patch is None:
        return {}
    merged = {**attributes, **patch}
    kept = {name: value for name, value in merged.items() if value is not None}
    if len(kept) > MAX_ATTRIBUTES:
        raise InvalidInput(
            f"A preference keeps at most {MAX_ATTRIBUTES} attributes; set some to null to "
            "remove them.",
            errors=[{"key": "attributes", "source": "body", "message": "too many attributes"}],
        )
    return kept


async def update_preference(
    conn: asyncpg.Connection,
    vault: Vault,
    customer_id: uuid.UUID,
    preference_id: uuid.UUID,
    data: PreferenceUpdate,
    expected_version: int | None,
) -> Preference:
    """Apply the fields given, if the stored version is still ``expected_version``."""
    async with conn.transaction():
        await lock_customer(conn, customer_id)
        row = await conn.fetchrow(GET_FOR_UPDATE, customer_id, preference_id)
        if row is None:
            raise NotFound("No such preference.")
        _check_version(row, expected_version)
        key = await data_key(conn, vault, customer_id)
        rank = row["rank"]
        if data.rank is not UNSET:
            count: int = await conn.fetchval(COUNT, customer_id)
            rank = min(data.rank, count)
            await _move(conn, customer_id, row["rank"], rank)
        content = open_content(key, row)  # a row in the per-field format is sealed anew
        if data.product is not UNSET:
            content.product = patched_product(content.product, data.product)
        if data.attributes is not UNSET:
            content.attributes = patched_attributes(content.attributes, data.attributes)
        status = row["status"]
        if data.status is not UNSET or data.product is not UNSET:
            # the catalogue's status for a SKU it knows, the patched one included (demand
            # reads the stored status); another sent by the customer is a 409
            sent = None if data.status is UNSET else data.status
            status = await product_status.kept_status(conn, content.product.sku, sent, status)
        if data.note is not UNSET:
            content.note = data.note
        history = open_purchases(key, row)
        updated = await conn.fetchrow(
            UPDATE,
            customer_id,
            preference_id,
            rank,
            status,
            seal_purchases(
                key,
                preference_id,
                history.purchases if data.purchases is UNSET else data.purchases,
                history.last_purchased_on
                if data.last_purchased_on is UNSET
                else data.last_purchased_on,
            ),
            *written(key, vault.index, preference_id, content),
        )
        assert updated is not None
        await follow(conn, vault, PreferencesChanged(customer_id))
        return await _preference(conn, key, updated)


DELETE = "DELETE FROM preferences WHERE customer_id = $1 AND preference_id = $2"
CLOSE_GAP = "UPDATE preferences SET rank = rank - 1 WHERE customer_id = $1 AND rank > $2"


async def delete_preference(
    conn: asyncpg.Connection,
    vault: Vault,
    customer_id: uuid.UUID,
    preference_id: uuid.UUID,
    expected_version: int | None,
) -> None:
    """Delete one preference and close the gap it leaves in the order."""
    async with conn.transaction():
        await lock_customer(conn, customer_id)
        row = await conn.fetchrow(GET_FOR_UPDATE, customer_id, preference_id)
        if row is None:
            raise NotFound("No such preference.")
        _check_version(row, expected_version)
        await conn.execute(DELETE, customer_id, preference_id)
        await conn.execute(CLOSE_GAP, customer_id, row["rank"])
        await follow(conn, vault, PreferencesChanged(customer_id))


# The backfill: purchase histories written in clear before revision 0009, a batch at a time in
# primary-key order (rows another run holds are skipped); the columns in clear are emptied.
PURCHASE_BACKLOG = """
SELECT p.customer_id, p.preference_id, p.purchases, p.last_purchased_on, k.generation, k.wrapped
FROM preferences p JOIN customer_keys k USING (customer_id)
WHERE (p.customer_id, p.preference_id) > ($2, $3) AND p.purchases_ct IS NULL
ORDER BY p.customer_id, p.preference_id
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
"""
SEAL_PURCHASES = """
UPDATE preferences p SET purchases_ct = u.sealed, purchases = NULL, last_purchased_on = NULL
FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) AS u(customer_id, preference_id, sealed)
WHERE (p.customer_id, p.preference_id) = (u.customer_id, u.preference_id)
"""


def seal_purchase_backlog(
    conn: asyncpg.Connection, vault: Vault, batch: int = 1000
) -> AsyncIterator[int]:
    """Seal the purchase histories still in clear, one transaction per batch; yields how many
    each batch sealed. Online, and safe to stop and run again."""
    return _backfill(
        conn,
        vault,
        PURCHASE_BACKLOG,
        SEAL_PURCHASES,
        batch,
        lambda key, row: seal_purchases(
            key, row["preference_id"], row["purchases"], row["last_purchased_on"]
        ),
    )


# The backfill: preferences written field by field before revision 0016, sealed as one
# ciphertext a batch at a time in primary-key order (rows another transaction holds are skipped:
# a writer seals them itself, and the next run finds the rest); the per-field columns stay, for
# the previous release's readers, until a later revision drops them.
CONTENT_BACKLOG = f"""
SELECT p.customer_id, p.preference_id, {CONTENT},
       k.generation, k.wrapped
FROM preferences p JOIN customer_keys k USING (customer_id)
WHERE (p.customer_id, p.preference_id) > ($2, $3) AND p.sealed IS NULL
ORDER BY p.customer_id, p.preference_id
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
"""
SEAL_CONTENT = """
UPDATE preferences p SET sealed = u.sealed
FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) AS u(customer_id, preference_id, sealed)
WHERE (p.customer_id, p.preference_id) = (u.customer_id, u.preference_id)
"""


def seal_content_backlog(
    conn: asyncpg.Connection, vault: Vault, batch: int = 500
) -> AsyncIterator[int]:
    """Seal each preference still kept field by field as one ciphertext, one short transaction
    per batch; yields how many each batch converted. Online (only the batch's rows are locked,
    and only while it runs), and safe to stop and run again. Neither version nor updated_at
    moves: what the preference says is unchanged."""
    return _backfill(
        conn,
        vault,
        CONTENT_BACKLOG,
        SEAL_CONTENT,
        batch,
        lambda key, row: seal(key, row["preference_id"], open_content(key, row)),
    )


# The backfill: the SKU index of preferences written before revision 0018, or rewritten since by
# the previous release (their index names another ciphertext), or indexed under an index key
# that is no longer the primary, a batch at a time in primary-key order (rows another
# transaction holds are skipped: a writer indexes them itself).
SKU_BACKLOG = f"""
SELECT p.customer_id, p.preference_id, p.sealed, k.generation, k.wrapped
FROM preferences p JOIN customer_keys k USING (customer_id)
WHERE (p.customer_id, p.preference_id) > ($2, $3) AND p.sealed IS NOT NULL
  AND ({UNINDEXED} OR substring(p.sku_index FOR 4) <> int4send($4))
ORDER BY p.customer_id, p.preference_id
LIMIT $1
FOR UPDATE OF p SKIP LOCKED
"""
INDEX_SKUS = f"""
UPDATE preferences p SET sku_index = u.sku_index, sku_index_of = {SEALED_NONCE}
FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) AS u(customer_id, preference_id, sku_index)
WHERE (p.customer_id, p.preference_id) = (u.customer_id, u.preference_id)
"""


def index_sku_backlog(
    conn: asyncpg.Connection, vault: Vault, batch: int = 500
) -> AsyncIterator[int]:
    """Index the SKU of each sealed preference not indexed (under the primary index key), one
    short transaction per batch; yields how many each batch indexed. Online, and safe to stop
    and run again; neither version nor updated_at moves."""
    return _backfill(
        conn,
        vault,
        SKU_BACKLOG,
        INDEX_SKUS,
        batch,
        lambda key, row: vault.index.sku(
            open_sealed(key, row["preference_id"], row["sealed"]).product.sku,
            row["preference_id"],
        ),
        vault.index.primary,
    )


async def _backfill(
    conn: asyncpg.Connection,
    vault: Vault,
    backlog: str,
    write: str,
    batch: int,
    made: Callable[[DataKey, asyncpg.Record], bytes],
    *more: object,
) -> AsyncIterator[int]:
    """A backfill of preferences, a batch at a time in primary-key order, one transaction per
    batch: ``backlog`` (its batch size $1, the last key done $2 and $3, then ``more``) selects
    the rows left with their customer's wrapped data key, locking them; ``made`` makes each
    row's new value under that key, and ``write`` (customer ids, preference ids, values) stores
    them. Yields how many rows each batch wrote."""
    after = (uuid.UUID(int=0), uuid.UUID(int=0))
    while True:
        async with conn.transaction():
            rows = await conn.fetch(backlog, batch, *after, *more)
            if not rows:
                return
            values = [
                made(
                    vault.envelope.unwrap(row["customer_id"], row["generation"], row["wrapped"]),
                    row,
                )
                for row in rows
            ]
            await conn.execute(
                write,
                [row["customer_id"] for row in rows],
                [row["preference_id"] for row in rows],
                values,
            )
        after = (rows[-1]["customer_id"], rows[-1]["preference_id"])
        yield len(rows)
