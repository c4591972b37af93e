"""The retailer's catalogue: importing it, searching it, reading a product.

Products are not personal and are kept in plaintext. Search matches a SKU prefix or every word
of the query as a prefix of a word of the name, brand or category (PostgreSQL full-text search,
'simple' configuration); results come in name order, a page at a time. Every import that changes
a product raises catalogue_state.version, which readers use as an ETag and to know when statuses
they keep in memory are stale, and records the SKUs whose status it moved (``catalogue_moves``),
which anonymous demand follows: the running service recounts the customers keeping them every
PREFS_EXPIRY_INTERVAL (prefs.retention), so an import needs no keys; a caller that holds them
may recount at once.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import asyncpg
import msgspec

from prefs import product_status
from prefs.catalogue.schemas import CatalogueProduct, ImportRow
from prefs.crypto import Vault
from prefs.errors import InvalidInput, NotFound
from prefs.events import StatusesMoved, follow

MAX_QUERY_WORDS = 8
COLUMNS = "sku, name, brand, category, status, attributes, replaced_by, updated_at"
VERSION = "SELECT version FROM catalogue_state"
GET = f"SELECT {COLUMNS} FROM catalogue_products WHERE sku = $1"
# $1: the query's words as a tsquery text ('' : no words), $2: the SKU prefix (lowercase, NULL:
# none), $3/$4: the last page's (name, sku), $5: the page size
SEARCH = f"""
SELECT {COLUMNS} FROM catalogue_products
WHERE ($1 = '' OR search @@ to_tsquery('simple', $1)
       OR ($2::text IS NOT NULL AND lower(sku) LIKE $2 || '%'))
  AND ($3::text IS NULL OR (name, sku) > ($3, $4))
ORDER BY name, sku
LIMIT $5
"""
# One batch of an import; only products that changed are returned (inserted: a new SKU).
UPSERT = """
INSERT INTO catalogue_products AS c (sku, name, brand, category, status, attributes, replaced_by)
SELECT r.sku, r.name, r.brand, r.category, r.status, r.attributes::jsonb, r.replaced_by
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
    AS r(sku, name, brand, category, status, attributes, replaced_by)
ON CONFLICT (sku) DO UPDATE SET
    name = EXCLUDED.name, brand = EXCLUDED.brand, category = EXCLUDED.category,
    status = EXCLUDED.status, attributes = EXCLUDED.attributes,
    replaced_by = EXCLUDED.replaced_by, updated_at = now()
WHERE (c.name, c.brand, c.category, c.status, c.attributes, c.replaced_by)
      IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.brand, EXCLUDED.category, EXCLUDED.status,
                        EXCLUDED.attributes, EXCLUDED.replaced_by)
RETURNING sku, xmax = 0 AS inserted
"""
BUMP = "UPDATE catalogue_state SET version = version + 1"
# The batch's products already known, as they stand, held until the batch commits (in SKU
# order, so that two imports at once take them in one order).
HOLD = (
    "SELECT sku, status FROM catalogue_products WHERE sku = ANY($1::text[]) ORDER BY sku FOR UPDATE"
)

_after = msgspec.json.Decoder(tuple[str, str])
FORGED = "after must be the `next` value of a previous page."


def _product(row: asyncpg.Record) -> CatalogueProduct:
    return CatalogueProduct(
        sku=row["sku"],
        name=row["name"],
        brand=row["brand"],
        category=row["category"],
        status=row["status"],
        attributes=row["attributes"],  # jsonb arrives decoded (prefs.db)
        replaced_by=row["replaced_by"],
        updated_at=row["updated_at"],
    )


def cursor(name: str, sku: str) -> str:
    """The next page starts after this product (not secret: the catalogue is public facts)."""
    return base64.urlsafe_b64encode(msgspec.json.encode((name, sku))).decode().rstrip("=")


def _open_cursor(after: str) -> tuple[str, str]:
    try:
        return _after.decode(base64.urlsafe_b64decode(after + "=" * (-len(after) % 4)))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise InvalidInput(FORGED) from None


def words(query: str) -> list[str]:
    """The words of a search, lowercase; letters and digits only (never tsquery syntax)."""
    found = re.findall(r"[^\W_]+", query.lower())
    if len(found) > MAX_QUERY_WORDS:
        raise InvalidInput(f"Search with at most {MAX_QUERY_WORDS} words.")
    return found


async def version(conn: asyncpg.Connection) -> int:
    """The catalogue's version: raised by every import that changes a product."""
    found: int = await conn.fetchval(VERSION)
    return found


async def search(
    conn: asyncpg.Connection, query: str, after: str | None, limit: int
) -> tuple[list[CatalogueProduct], str | None]:
    """A page of products whose SKU starts with ``query`` or whose words start with its words."""
    terms = words(query)
    tsquery = " & ".join(f"{term}:*" for term in terms)
    prefix = re.sub(r"([\\%_])", r"\\\1", query.strip().lower()) or None  # LIKE's wildcards
    last_name, last_sku = _open_cursor(after) if after else (None, None)
    rows = await conn.fetch(SEARCH, tsquery, prefix if terms else None, last_name, last_sku, limit)
    products = [_product(row) for row in rows]
    following = cursor(rows[-1]["name"], rows[-1]["sku"]) if len(rows) == limit else None
    return products, following


async def get(conn: asyncpg.Connection, sku: str) -> CatalogueProduct:
    row = await conn.fetchrow(GET, sku)
    if row is None:
        raise NotFound("No product with this SKU is in the catalogue.")
    return _product(row)


@dataclass
class ImportReport:
    """What an import did: counts, and each refused line with its reason."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    moved: int = 0  # products whose status was set or changed: demand follows them
    refused: list[tuple[int, str]] = field(default_factory=list)


def _arguments(rows: Sequence[ImportRow]) -> list[list[str | None]]:
    return [
        [row.sku for row in rows],
        [row.name for row in rows],
        [row.brand for row in rows],
        [row.category for row in rows],
        [row.status for row in rows],
        [msgspec.json.encode(row.attributes).decode() for row in rows],
        [row.replaced_by for row in rows],
    ]


async def _upsert(
    conn: asyncpg.Connection, rows: Sequence[ImportRow]
) -> tuple[list[asyncpg.Record], int]:
    """The batch in one transaction: the products changed, the catalogue's version raised, and
    the SKUs whose status moved (or that are new: a customer's own status gave way to the
    catalogue's) recorded for demand to follow; returns the products changed and how many
    moved."""
    moved: list[str] = []
    async with conn.transaction():
        before = {
            row["sku"]: row["status"] for row in await conn.fetch(HOLD, [r.sku for r in rows])
        }
        changed = await conn.fetch(UPSERT, *_arguments(rows))
        if changed:
            await conn.execute(BUMP)
            statuses = {row.sku: row.status for row in rows}
            moved = [
                row["sku"] for row in changed if before.get(row["sku"]) != statuses[row["sku"]]
            ]
            await product_status.record_moves(conn, moved)
    return changed, len(moved)


async def import_batch(
    conn: asyncpg.Connection, batch: Sequence[tuple[int, ImportRow]], report: ImportReport
) -> None:
    """Upsert one batch of valid rows (line number, row) in one transaction; should the database
    refuse the batch, each row is tried alone, so that one row never rolls back another."""
    try:
        changed, moved = await _upsert(conn, [row for _, row in batch])
    except asyncpg.PostgresError:
        if len(batch) == 1:
            raise
        for line, row in batch:
            try:
                await import_batch(conn, [(line, row)], report)
            except asyncpg.PostgresError as error:
                report.refused.append((line, f"refused by the database: {error.message}"))
        return
    added = sum(1 for row in changed if row["inserted"])
    report.added += added
    report.changed += len(changed) - added
    report.unchanged += len(batch) - len(changed)
    report.moved += moved


async def import_rows(
    conn: asyncpg.Connection,
    vault: Vault | None,
    rows: Iterable[tuple[int, ImportRow | str]],
    report: ImportReport,
    batch_size: int = 2_000,
) -> ImportReport:
    """Import parsed rows (line number and row, or the reason the line was refused). A SKU seen
    earlier in the same file refuses the later line.

    The status moves are recorded for anonymous demand to follow. Given the keys (``vault``: the
    development demo, the load test's seed), the import follows them at once, recounting the
    customers keeping those SKUs, and any moves still waiting; without them (`prefs catalogue
    import`, a batch job holding no keys), the running service does within its expiry
    interval."""
    seen: dict[str, int] = {}
    batch: list[tuple[int, ImportRow]] = []
    for line, row in rows:
        if isinstance(row, str):
            report.refused.append((line, row))
            continue
        if row.sku in seen:
            report.refused.append((line, f"SKU {row.sku!r} already given on line {seen[row.sku]}"))
            continue
        seen[row.sku] = line
        batch.append((line, row))
        if len(batch) >= batch_size:
            await import_batch(conn, batch, report)
            batch = []
    if batch:
        await import_batch(conn, batch, report)
    if vault is not None:
        await follow(conn, vault, StatusesMoved())
    return report
