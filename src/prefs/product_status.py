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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


async def of(conn: Any, skus: Iterable[str | None]) -> dict[str, Status]:
    """The catalogue's status of each of ``skus`` it knows (a product without one has none)."""
    wanted = sorted({sku for sku in skus if sku is not None})
    if not wanted:
        return {}
    return {row["sku"]: row["status"] for row in await conn.fetch(STATUSES, wanted)}


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
    back the status it read is not changing it). Anonymous demand reads the stored status."""
    known = None if sku is None else (await of(conn, [sku])).get(sku)
    if known is not None and sent is not None and known != sent:
        raise Conflict(
            f"The shop's catalogue says this product is {known}, and its status follows the "
            "catalogue: a customer sets the status only of products the catalogue does not know."
        )
    return known or sent or otherwise


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
