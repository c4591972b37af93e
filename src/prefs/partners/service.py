"""Partners: the directory customers choose from, and what a partner does through its key.

A partner reads the reorders addressed to it (the feed), moves them on, proposes reorders
to customers who share with it, and reads a consenting customer's granted preferences. It
knows customers and their preferences only by references made for it (prefs.partner_refs).
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import asyncpg
import msgspec

from prefs import cursors, disclosures, feeds, partner_refs, product_status
from prefs.credentials import Credential
from prefs.crypto import DataKey, Vault
from prefs.customer_keys import data_key
from prefs.db import Row
from prefs.errors import Conflict, LimitReached, NotFound
from prefs.grants import (
    IN_FORCE,
    live_grant,
    partner_audience,
    partner_audience_sql,
    partner_fields,
)
from prefs.partners.schemas import (
    Partner,
    PartnerFeed,
    PartnerReorder,
    PartnerReorderCreate,
    StatusChanged,
)
from prefs.products import SharedPreference
from prefs.sealed_preferences import GET as GET_PREFERENCE
from prefs.sealed_preferences import SHOWN, shared_view, skus
from prefs.sealed_reorders import Snapshot, insert, narrowed, open_snapshot, row_key

DIRECTORY = """
SELECT partner_id AS id, name, description FROM partners WHERE retired_at IS NULL
ORDER BY name, partner_id
"""


async def directory(conn: asyncpg.Connection) -> list[Partner]:
    return [Partner(**dict(row)) for row in await conn.fetch(DIRECTORY)]


# What making or sending the item needs: an accepted reorder keeps showing these to its partner
# (for a while), whatever the grant; the note only while the grant still covers it.
FULFILMENT = ("product", "attributes")
WAITING = ("proposed", "requested")
# (from, to) moves a partner may make; repeating the current state is a no-op. A proposal (a
# partner's own reorder) waits for the customer: the partner can only withdraw it (declined).
PARTNER_MOVES = {
    ("proposed", "declined"),
    ("requested", "accepted"),
    ("accepted", "fulfilled"),
    ("requested", "declined"),
    ("accepted", "declined"),
}
_partner_reorder = msgspec.json.Decoder(PartnerReorder)


async def _consenting_customer(
    conn: asyncpg.Connection, partner_id: uuid.UUID, ref: str
) -> uuid.UUID:
    """The customer behind a partner's reference, if they grant that partner consent now."""
    customer_id = await partner_refs.customer_of(conn, partner_id, ref)
    if (
        customer_id is None
        or await live_grant(conn, customer_id, partner_audience(partner_id), hold=True) is None
    ):
        raise NotFound("No such customer reference.")
    return customer_id


def _partner_view(
    row: Row, ref: str | None, snap: Snapshot | None, fields: list[str]
) -> PartnerReorder:
    return PartnerReorder(
        id=row["reorder_id"],
        customer=ref or "erased",
        preference_id=row["preference_ref"],
        origin=row["origin"],
        quantity=row["quantity"],
        state=row["state"],
        fields=fields,
        item=snap,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def shown_to_partner(row: Row) -> list[str]:
    """The fields of a reorder's snapshot its partner may see now.

    Waiting (proposed, requested): the fields the grant in force gives of its preference.
    Accepted: what fulfilment needs, plus the note while the grant still covers it, and only
    until the window after acceptance ends. Finished: nothing. ``row`` carries the reorder's
    state and fields and the grant's ``granted`` fields, ``covered`` and ``in_window``
    (see PARTNER_SIGHT).
    """
    granted = row["granted"] if row["covered"] else []
    if row["state"] in WAITING:
        return [field for field in row["fields"] if field in granted]
    if row["state"] == "accepted" and row["in_window"]:
        return [field for field in row["fields"] if field in FULFILMENT or field in granted]
    return []


class ProposalLimits(NamedTuple):
    """How many of a partner's proposals may wait for one customer, and how large each may be."""

    open: int
    max_quantity: int


# Proposals to one customer from one partner are counted one transaction at a time. An advisory
# lock, not the grant's row: every transaction here already holds that row FOR SHARE, and two
# of them upgrading it would deadlock.
LOCK_PROPOSALS = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
# Waiting proposals, and those the partner itself declined in the last day: withdrawing a
# proposal to place another does not get round the limit.
OPEN_PROPOSALS = """
SELECT count(*) FROM reorders
WHERE customer_id = $1 AND partner_id = $2 AND origin = 'partner'
  AND (state = 'proposed' OR (state = 'declined' AND updated_at > now() - interval '1 day'))
"""


async def create_for_partner(
    conn: asyncpg.Connection,
    vault: Vault,
    partner: Credential,
    data: PartnerReorderCreate,
    limits: ProposalLimits,
) -> tuple[uuid.UUID, PartnerReorder]:
    """A partner proposes a reorder for a customer who lets it see that preference; it waits
    for the customer's confirmation, and only a few small ones may wait at a time."""
    assert partner.partner_id is not None
    if data.quantity > limits.max_quantity:
        raise LimitReached(
            f"A partner may propose at most {limits.max_quantity} of an item at a time."
        )
    customer_id = await _consenting_customer(conn, partner.partner_id, data.customer)
    preference_id = await partner_refs.preference_of(
        conn, customer_id, partner.partner_id, data.preference
    )
    fields = preference = None
    if preference_id is not None:
        fields = await partner_fields(conn, customer_id, partner.partner_id, preference_id)
        preference = await conn.fetchrow(GET_PREFERENCE, customer_id, preference_id)
    if preference_id is None or fields is None or preference is None:
        raise NotFound("No such preference for this customer reference.")
    await conn.execute(LOCK_PROPOSALS, f"proposals:{customer_id}:{partner.partner_id}")
    if await conn.fetchval(OPEN_PROPOSALS, customer_id, partner.partner_id) >= limits.open:
        raise LimitReached(
            f"This customer already has {limits.open} of your proposals to answer (proposals "
            "you declined count for a day); propose again once they have answered one."
        )
    key = await data_key(conn, vault, customer_id)
    row, snap = await insert(
        conn,
        key,
        preference,
        partner_audience(partner.partner_id),
        partner.partner_id,
        "partner",
        data.quantity,
        fields,
        data.preference,
        "proposed",
    )
    await disclosures.record(
        conn,
        partner,
        "reorder",
        "reference",
        [(customer_id, [preference_id], fields)],
        vault=vault,
    )
    return customer_id, _partner_view(row, data.customer, snap, fields)


async def replay_for_partner(
    conn: asyncpg.Connection,
    vault: Vault,
    partner: Credential,
    data: PartnerReorderCreate,
    window_days: int,
    customer_id: uuid.UUID,
    answer: bytes,
) -> tuple[bytes, bool]:
    """A partner's first answer to this request, shown again as the grant in force allows, and
    whether it disclosed anything.

    The same checks as a new request come first, with the same 404s. The item is then shown as
    the feed would show it now (never more than the grant allows), and logged when it shows
    anything.
    """
    assert partner.partner_id is not None
    if await _consenting_customer(conn, partner.partner_id, data.customer) != customer_id:
        raise NotFound("No such customer reference.")
    preference_id = await partner_refs.preference_of(
        conn, customer_id, partner.partner_id, data.preference
    )
    if (
        preference_id is None
        or await partner_fields(conn, customer_id, partner.partner_id, preference_id) is None
    ):
        raise NotFound("No such preference for this customer reference.")
    first = _partner_reorder.decode(answer)
    row = await conn.fetchrow(
        ONE_FOR_PARTNER, first.id, partner.partner_id, window_days, customer_id
    )
    assert row is not None
    first.preference_id = row["preference_ref"]  # an answer stored before ids were pairwise
    first.fields = shown_to_partner(row)
    key = await data_key(conn, vault, customer_id)
    first.item = narrowed(open_snapshot(key, row), first.fields)
    if first.item is not None:
        await disclosures.record(
            conn,
            partner,
            "reorder",
            "reference",
            [(customer_id, [preference_id], first.fields)],
            vault=vault,
        )
    return msgspec.json.encode(first), first.item is not None


FEED_CURSOR, FEED_CURSOR_BEFORE = "partner-feed-position", "partner-feed"


def encode_feed_cursor(vault: Vault, partner_id: uuid.UUID, position: int) -> str:
    """The partner's opaque position in its feed."""
    return cursors.seal_position(vault.page_cursors, FEED_CURSOR, partner_id, position)


def decode_feed_cursor(vault: Vault, partner_id: uuid.UUID, cursor: str | None) -> int:
    """The position a feed cursor holds; 400 for one this partner was not given, 410 for one the
    previous release gave it (by transaction id)."""
    return cursors.open_position(
        vault.page_cursors, FEED_CURSOR, partner_id, cursor, retired=FEED_CURSOR_BEFORE
    )


# What decides how much of a reorder its partner sees now (shown_to_partner): the grant in
# force, whether it covers the reorder's preference, and whether an accepted reorder is still
# within its window ($WINDOW: days after acceptance).
PARTNER_SIGHT = """
       g.fields AS granted,
       g.customer_id IS NOT NULL
           AND (g.preference_ids IS NULL OR r.preference_id = ANY(g.preference_ids)) AS covered,
       coalesce(r.accepted_at > now() - make_interval(days => $WINDOW::int), false) AS in_window
"""
# A waiting reorder whose grant has ended is cancelled: by the grant's withdrawal at once, by
# its expiry when the expiry job runs, and as partners see it from the expiry instant on.
STATE_SEEN = """
CASE WHEN r.state IN ('proposed', 'requested') AND g.customer_id IS NULL THEN 'cancelled'
     ELSE r.state END AS state"""
GRANT_IN_FORCE = f"""
LEFT JOIN consents g ON g.customer_id = r.customer_id AND g.audience = {partner_audience_sql("r.partner_id")}
    AND {IN_FORCE}
"""
# The reorders of a page of the partner's feed (prefs.feeds.page), by customer and id.
FEED = f"""
SELECT r.customer_id, r.reorder_id, r.preference_id, r.preference_ref, r.origin, r.quantity,
       {STATE_SEEN}, r.fields, r.snapshot_ct, r.created_at, r.updated_at, r.fulfiller,
       r.feed_position, k.generation, k.wrapped, {PARTNER_SIGHT.replace("$WINDOW", "$3")}
FROM reorders r
LEFT JOIN customer_keys k ON k.customer_id = r.customer_id
{GRANT_IN_FORCE}
WHERE r.customer_id = ANY($1::uuid[]) AND r.reorder_id = ANY($2::uuid[])
"""
ONE_FOR_PARTNER = f"""
SELECT r.reorder_id, r.preference_ref, {STATE_SEEN}, r.fields, r.snapshot_ct,
       {PARTNER_SIGHT.replace("$WINDOW", "$3")}
FROM reorders r
{GRANT_IN_FORCE}
WHERE r.customer_id = $4 AND r.reorder_id = $1 AND r.partner_id = $2
"""


async def feed(
    conn: asyncpg.Connection,
    vault: Vault,
    partner: Credential,
    after: str | None,
    limit: int,
    window_days: int,
) -> PartnerFeed:
    """The next reorders addressed to this partner, in the order of their positions in its feed
    (prefs.feeds: one that commits late is never skipped, none comes twice)."""
    assert partner.partner_id is not None
    start = decode_feed_cursor(vault, partner.partner_id, after)
    async with conn.transaction():
        rows, position = await feeds.page(
            conn, feeds.partner(partner.partner_id), start, limit, FEED, window_days
        )
        refs = await partner_refs.refs_of(
            conn, partner.partner_id, list({row["customer_id"] for row in rows})
        )
        items, disclosed = [], []
        keys: dict[uuid.UUID, DataKey] = {}  # each customer's, unwrapped once per page
        for row in rows:
            snap, fields = None, shown_to_partner(row)
            if fields and row["wrapped"] is not None:
                snap = narrowed(open_snapshot(row_key(vault, keys, row), row), fields)
                disclosed.append((row["customer_id"], [row["preference_id"]], fields))
            items.append(
                _partner_view(row, refs.get(row["customer_id"]), snap, fields if snap else [])
            )
        await disclosures.record(
            conn, partner, "reorder", "reorder", disclosed, vault=vault, keys=keys
        )
    same = after if after and position == start else None  # nothing new: the same cursor
    return PartnerFeed(
        items=items, next=same or encode_feed_cursor(vault, partner.partner_id, position)
    )


FOR_PARTNER = f"""
SELECT r.customer_id, r.reorder_id, r.preference_id, r.preference_ref, r.origin, r.quantity,
       {STATE_SEEN}, r.fields, r.snapshot_ct, r.created_at, r.updated_at
FROM reorders r
{GRANT_IN_FORCE}
WHERE r.customer_id = $3 AND r.reorder_id = $1 AND r.partner_id = $2
FOR UPDATE OF r
"""
MOVE = """
UPDATE reorders SET state = $3, updated_at = now(),
       accepted_at = CASE WHEN $3 = 'accepted' THEN now() ELSE accepted_at END
WHERE customer_id = $1 AND reorder_id = $2
RETURNING reorder_id, preference_id, preference_ref, origin, quantity, state, fields, created_at,
          updated_at
"""


async def set_status(
    conn: asyncpg.Connection,
    vault: Vault,
    partner: Credential,
    reorder_id: uuid.UUID,
    state: str,
    window_days: int,
) -> StatusChanged:
    """Move a reorder on (accepted → fulfilled, or declined); repeating a state is a no-op.

    The answer is the reorder as the feed shows it after the move (an accepted one with what
    fulfilling it needs, a finished one without its item), and the state it moved from.
    """
    assert partner.partner_id is not None
    async with conn.transaction():
        customer_id = await feeds.customer_of(conn, feeds.partner(partner.partner_id), reorder_id)
        row = (
            None
            if customer_id is None
            else await conn.fetchrow(FOR_PARTNER, reorder_id, partner.partner_id, customer_id)
        )
        if row is None:
            raise NotFound("No such reorder.")
        ref = await partner_refs.reference(conn, partner.partner_id, row["customer_id"])
        now = dict(row)
        if row["state"] != state:
            if (row["state"], state) not in PARTNER_MOVES:
                raise Conflict(f"A {row['state']} reorder cannot become {state}.")
            moved = await conn.fetchrow(MOVE, row["customer_id"], reorder_id, state)
            assert moved is not None
            now.update(moved)
        sight = await conn.fetchrow(
            ONE_FOR_PARTNER, reorder_id, partner.partner_id, window_days, row["customer_id"]
        )
        assert sight is not None
        fields, snap = shown_to_partner(sight), None
        if fields and sight["snapshot_ct"] is not None:  # none left once the customer erased
            key = await data_key(conn, vault, row["customer_id"])
            snap = narrowed(open_snapshot(key, sight), fields)
        if snap is not None:
            disclosed = [(row["customer_id"], [row["preference_id"]], fields)]
            await disclosures.record(conn, partner, "reorder", "reorder", disclosed, vault=vault)
        view = _partner_view(now, ref, snap, fields if snap else [])
        return StatusChanged(**msgspec.structs.asdict(view), previous_state=row["state"])


# The customer comes first from the partner's reference (found by partner), then everything else
# by customer: `hit` is inlined wherever it is used, so every table is read on that customer's
# node alone.
PARTNER_PREFERENCES = f"""
WITH hit AS NOT MATERIALIZED (
    SELECT g.customer_id, g.fields, g.preference_ids
    FROM consents g
    WHERE g.customer_id = $1 AND g.audience = $2 AND {IN_FORCE}
), shown AS ({SHOWN})
SELECT hit.customer_id, hit.fields, k.generation, k.wrapped,
       shown.preference_id, shown.rank, shown.status, shown.product_ct, shown.attributes_ct,
       shown.note_ct, shown.sealed
FROM hit
JOIN customer_keys k ON k.customer_id = hit.customer_id
LEFT JOIN shown ON true
ORDER BY shown.rank
"""


async def partner_preferences(
    conn: asyncpg.Connection, vault: Vault, partner: Credential, ref: str
) -> list[SharedPreference]:
    """The granted fields of the granted preferences of a consenting customer, logged."""
    assert partner.partner_id is not None
    async with conn.transaction():
        customer_id = await partner_refs.customer_of(conn, partner.partner_id, ref)
        rows = (
            []
            if customer_id is None
            else await conn.fetch(
                PARTNER_PREFERENCES, customer_id, partner_audience(partner.partner_id)
            )
        )
        if not rows:
            raise NotFound("No such customer reference.")
        first = rows[0]
        key = vault.envelope.unwrap(first["customer_id"], first["generation"], first["wrapped"])
        found = [row for row in rows if row["preference_id"] is not None]
        catalogue = await product_status.of(conn, skus(key, found))
        shown = [shared_view(key, catalogue, row) for row in found]
        refs = await partner_refs.refs_for(
            conn, first["customer_id"], partner.partner_id, [p.id for p in shown]
        )
        shown = [p for p in shown if p.id in refs]  # not one deleted meanwhile
        await disclosures.record(
            conn,
            partner,
            "partner-read",
            "reference",
            [(first["customer_id"], [p.id for p in shown], list(first["fields"]))],
            vault=vault,
        )
    # the partner's own ids, numbered 1..n: no gap tells it of a preference it is not shown
    for rank, preference in enumerate(shown, start=1):
        preference.id, preference.rank = refs[preference.id], rank
    return shown
