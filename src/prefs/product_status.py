"""The catalogue's word on a product's status, laid over what the customer stored.

A preference keeps the status its customer gave it; where its SKU is in the retailer's catalogue,
every read shows the catalogue's current status instead (the customer's own words stay theirs).
Every read says whose word the status is (``status_source``): ``catalogue`` where the catalogue
knows the SKU, ``customer`` otherwise. A customer may change the status only of a product the
catalogue does not know (``kept_status``): for the rest it is the shop's fact.
The SKU is sealed with the rest of the product, so the overlay happens after opening, never in
SQL: reads that are not hot ask for the statuses of the SKUs they opened (``of``); the till
lookup keeps every status in memory (``StatusCache``) and its lookup statement returns the
catalogue's version, so the memory is read again only after an import changed something.
Anonymous demand counts the catalogue's status too (``held``): an import records the SKUs whose
status it moved, and the service recounts the customers keeping them (prefs.retention).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prefs.errors import Conflict
from prefs.products import Status

STATUSES = "SELECT sku, status FROM catalogue_products WHERE sku = ANY($1::text[])"
# Both arrays from one read of the table, so in the same order: two reads may take different
# paths (on the till's connections, where sequential scans are off, the SKUs alone come by their
# index in SKU order and the statuses in the rows' order), which would pair each SKU with
# another's status.
ALL_STATUSES = """
SELECT (SELECT version FROM catalogue_state) AS version,
       coalesce(array_agg(sku), '{}') AS skus,
       coalesce(array_agg(status = 'discontinued'), '{}') AS discontinued
FROM catalogue_products
"""
# for a statement that wants to say which catalogue it read: a scalar subquery
VERSION = "(SELECT version FROM catalogue_state)"
# The SKUs whose status an import moved (or that it added), until demand follows them. Both
# writers take the rows in SKU order: a batch recording moves while a recount forgets the same
# SKUs (an import while the service recounts) would otherwise each hold a row the other waits for.
MOVED = f"""
INSERT INTO catalogue_moves (sku, version)
SELECT sku, {VERSION} FROM unnest($1::text[]) AS sku ORDER BY sku
ON CONFLICT (sku) DO UPDATE SET version = EXCLUDED.version
"""
MOVES = "SELECT sku, version FROM catalogue_moves ORDER BY version, sku LIMIT $1"
# only as moved then: a SKU moved again meanwhile stays until that move is followed too (the
# lock re-reads a row another import changed, and its version no longer matches)
FOLLOWED = """
DELETE FROM catalogue_moves WHERE sku IN (
    SELECT m.sku FROM catalogue_moves m
    JOIN unnest($1::text[], $2::bigint[]) AS f(sku, version)
        ON m.sku = f.sku AND m.version = f.version
    ORDER BY m.sku
    FOR UPDATE OF m
)
"""


# An import's batch that changes the catalogue raises its version in the same transaction
# (UPDATE catalogue_state), which this share lock and that update wait on each other for.
HOLD = "SELECT version FROM catalogue_state FOR SHARE"


async def of(conn: Any, skus: Iterable[str | None]) -> dict[str, Status]:
    """The catalogue's status of each of ``skus`` it knows (a product without one has none)."""
    wanted = sorted({sku for sku in skus if sku is not None})
    if not wanted:
        return {}
    return {row["sku"]: row["status"] for row in await conn.fetch(STATUSES, wanted)}


async def held(conn: Any, skus: Iterable[str | None]) -> dict[str, Status]:
    """:func:`of`, for a count that must follow every import (anonymous demand): read once no
    import's change is in flight, and holding off the next until this transaction ends. So an
    import either is seen here, or commits after this, and the recount of the customers keeping
    the SKUs it moved (``catalogue_moves``) then finds what this wrote."""
    wanted = [sku for sku in skus if sku is not None]
    if not wanted:
        return {}
    await conn.execute(HOLD)
    return await of(conn, wanted)


def overlaid(stored: Status, sku: str | None, catalogue: Mapping[str, Status]) -> Status:
    """The status a reader sees: the catalogue's for a SKU it knows, else the stored one."""
    if sku is None:
        return stored
    return catalogue.get(sku, stored)


async def kept_status(
    conn: Any, sku: str | None, sent: Status | None, otherwise: Status = "available"
) -> Status:
    """The status to store for a product with ``sku``: the catalogue's where it knows the SKU,
    else the one the customer ``sent``, else ``otherwise``. A customer's status for a product
    the catalogue knows is refused (409) unless it is the catalogue's own (a client sending
    back the status it read is not changing it)."""
    known = None if sku is None else (await of(conn, [sku])).get(sku)
    if known is not None and sent is not None and known != sent:
        raise Conflict(
            f"The shop's catalogue says this product is {known}, and its status follows the "
            "catalogue: a customer sets the status only of products the catalogue does not know."
        )
    return known or sent or otherwise


async def record_moves(conn: Any, skus: Sequence[str]) -> None:
    """Record that the catalogue's status of ``skus`` moved (call in the import's transaction,
    after it raised the catalogue's version)."""
    if skus:
        await conn.execute(MOVED, list(skus))


async def moves(conn: Any, limit: int) -> list[tuple[str, int]]:
    """Status moves not followed yet (SKU, the catalogue version that moved it), oldest first."""
    return [(row["sku"], row["version"]) for row in await conn.fetch(MOVES, limit)]


async def followed(conn: Any, moved: Sequence[tuple[str, int]]) -> None:
    """Forget moves that demand has followed (a SKU moved again since stays)."""
    await conn.execute(FOLLOWED, [sku for sku, _ in moved], [version for _, version in moved])


class StatusCache:
    """Every catalogue status, per process, as of a catalogue version."""

    def __init__(self) -> None:
        self.version = 0
        self.statuses: dict[str, Status] = {}

    async def current(self, db: Any, version: int) -> Mapping[str, Status]:
        """The statuses as of ``version`` (read again, from ``db``, a pool or a connection,
        when an import has changed them)."""
        if version != self.version:
            row = await db.fetchrow(ALL_STATUSES)
            assert row is not None
            self.statuses = {
                sku: "discontinued" if gone else "available"
                for sku, gone in zip(row["skus"], row["discontinued"], strict=True)
            }
            self.version = row["version"]
        return self.statuses
