"""Feeds: the reorders addressed to a partner and a store's queue, in the order their recipient
handed out positions.

A reorder takes the next position of its recipient (`partner:<id>`, `store:<id>`) when it enters
the recipient's list; a trigger does it (migration 0015), so no writer can forget. Taking a
position locks the recipient's counter until the writing transaction ends, so positions commit
in order: once a reader sees position n, no change at a smaller position can still commit. A
reader's cursor is the last position it was shown; it never skips a change that commits late
and never sees one twice.

A page is read in two steps, each found by its own key, as on a cluster where the entries live
with their recipient and the reorders with their customer (docs/scale-out.md): the entries after
the cursor, then those reorders by customer and id. The second step can see a reorder newer or
older than its entry (a cluster makes each node's part of a transaction visible one after
another): a reorder that has moved on to a newer position or another recipient is passed over
(it comes again there); one not yet written at its entry's position, or gone, ends the page
before it, so the next read finds it or finds its entry gone.

Positions carry their numbering in their top bits (migration 0015): downgrading and upgrading
again numbers every list afresh, and a cursor from before names a place in a list that is gone.
A page after a cursor first reads its recipient's counter, which holds the numbering in force
(read each time: a round trip can happen while the service runs), and answers 410 when the two
differ, so the client reads its list again from the start instead of skipping what comes next.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from prefs.cursors import RETIRED
from prefs.db import Row
from prefs.errors import CursorRetired

NUMBERING_BITS = 40  # a position >> 40 names its numbering (migration 0015)

ENTRIES = """
SELECT position, customer_id, reorder_id FROM feed_entries
WHERE recipient = $1 AND position > $2
ORDER BY position
LIMIT $3
"""

COUNTER = "SELECT last FROM feed_positions WHERE recipient = $1"

CUSTOMER_OF = "SELECT customer_id FROM feed_entries WHERE recipient = $1 AND reorder_id = $2"


async def customer_of(
    conn: asyncpg.Connection, recipient: str, reorder_id: uuid.UUID
) -> uuid.UUID | None:
    """Whose reorder this is, if it is addressed to ``recipient`` (a partner or store names a
    reorder by its id alone; its entry says which customer's rows to read)."""
    customer_id: uuid.UUID | None = await conn.fetchval(CUSTOMER_OF, recipient, reorder_id)
    return customer_id


# A statement that moves several of a customer's reorders at once (erasure) takes their rows and
# then their recipients' counters, one at a time, in an order of its own; a till takes a row, then
# its store's counter. Locking the customer's reorders first, then the counters in one order,
# keeps either from holding what the other waits for.
CUSTOMER_REORDERS = """
SELECT fulfiller FROM reorders WHERE customer_id = $1 ORDER BY reorder_id FOR UPDATE
"""
COUNTERS = """
SELECT recipient FROM feed_positions WHERE recipient = ANY($1::text[]) ORDER BY recipient
FOR UPDATE
"""


async def hold_customer(conn: asyncpg.Connection, customer_id: uuid.UUID) -> None:
    """Lock the customer's reorders, then their recipients' counters, before a statement that
    moves several of them (inside its transaction)."""
    rows = await conn.fetch(CUSTOMER_REORDERS, customer_id)
    await conn.execute(COUNTERS, sorted({row["fulfiller"] for row in rows}))


def partner(partner_id: uuid.UUID) -> str:
    """The recipient name of a partner's feed (its reorders' fulfiller)."""
    return f"partner:{partner_id}"


def store(store_id: str) -> str:
    """The recipient name of a store's queue (its reorders' fulfiller)."""
    return f"store:{store_id}"


def in_order(recipient: str, entries: Sequence[Row], rows: Sequence[Row]) -> tuple[list[Row], int]:
    """The reorders ``rows`` (each with its ``fulfiller`` and ``feed_position``) to show for
    ``entries``, in their order, and how many entries that used up (the page ends at the first
    entry whose reorder is not visible as it stands)."""
    found = {row["reorder_id"]: row for row in rows}
    shown: list[Row] = []
    for used, entry in enumerate(entries):
        row = found.get(entry["reorder_id"])
        if row is not None and row["fulfiller"] != recipient:
            continue  # addressed elsewhere since
        if row is None:
            return shown, used
        # NULL: numbered by migration 0015 and unchanged since; its entry holds its position
        position = row["feed_position"] or entry["position"]
        if position < entry["position"]:
            return shown, used
        if position == entry["position"]:
            shown.append(row)
    return shown, len(entries)


async def page(
    conn: asyncpg.Connection,
    recipient: str,
    after: int,
    limit: int,
    reorders: str,
    *args: object,
) -> tuple[list[Row], int]:
    """Up to ``limit`` reorders after position ``after`` in ``recipient``'s feed, and the position
    to go on from. ``reorders`` selects them by ``customer_id = ANY($1)`` and
    ``reorder_id = ANY($2)`` (``args`` follow) with their ``fulfiller`` and ``feed_position``;
    CursorRetired (410) when ``after`` is of another numbering than the list's, or beyond it."""
    if after:
        last: int | None = await conn.fetchval(COUNTER, recipient)
        # no counter: the list was numbered afresh and nothing has entered it since; a cursor
        # beyond the counter names a place the list never reached (a database restored from a
        # backup, the same numbering drawn again): read after it, it would skip what comes next
        if last is None or after > last or last >> NUMBERING_BITS != after >> NUMBERING_BITS:
            raise CursorRetired(RETIRED)
    shown: list[Row] = []
    while len(shown) < limit:
        wanted = limit - len(shown)
        entries = await conn.fetch(ENTRIES, recipient, after, wanted)
        if not entries:
            break
        rows = await conn.fetch(
            reorders,
            list({entry["customer_id"] for entry in entries}),
            [entry["reorder_id"] for entry in entries],
            *args,
        )
        more, used = in_order(recipient, entries, rows)
        shown += more
        if used:
            after = entries[used - 1]["position"]
        if used < len(entries) or len(entries) < wanted:
            break
    return shown, after
