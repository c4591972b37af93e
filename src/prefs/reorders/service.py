"""Reorders: placed by customers or by partners they consented to, pulled by partners.

Each reorder keeps an encrypted snapshot of exactly what was disclosed when it was placed.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import asyncpg
import msgspec
from msgspec import UNSET

from prefs import cursors, disclosures, partner_refs
from prefs.credentials import Credential
from prefs.crypto import DataKey, Vault
from prefs.customer_keys import data_key
from prefs.db import Row
from prefs.errors import Conflict, InvalidInput, LimitReached, NotFound
from prefs.grants import (
    IN_FORCE,
    covers,
    live_grant,
    partner_audience,
    partner_audience_sql,
    partner_of,
)
from prefs.products import SharedPreference
from prefs.reorders.schemas import (
    PartnerFeed,
    PartnerReorder,
    PartnerReorderCreate,
    Reorder,
    ReorderCreate,
    ReorderList,
    Snapshot,
)
from prefs.sealed_preferences import GET as GET_PREFERENCE
from prefs.sealed_preferences import (
    SHOWN,
    decrypt_attributes,
    decrypt_note,
    decrypt_product,
    shared_view,
)

ALL_FIELDS = ["product", "attributes", "note"]
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
_snapshot = msgspec.json.Decoder(Snapshot)
_partner_reorder = msgspec.json.Decoder(PartnerReorder)


def partner_id_of(fulfiller: str) -> uuid.UUID:
    partner_id = partner_of(fulfiller)
    if partner_id is None:
        raise InvalidInput("fulfiller must be `store` or `partner:<partner id>`.")
    return partner_id


PARTNER_EXISTS = "SELECT 1 FROM partners WHERE partner_id = $1 AND retired_at IS NULL"


async def partner_grant(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    partner_id: uuid.UUID,
    preference_id: uuid.UUID,
) -> list[str] | None:
    """The fields a live grant to the partner reveals of this preference, or None."""
    grant = await live_grant(conn, customer_id, partner_audience(partner_id), hold=True)
    if grant is None or not covers(grant, preference_id):
        return None
    return list(grant["fields"])


def _snapshot_of(key: DataKey, row: Row, fields: list[str]) -> Snapshot:
    pid = row["preference_id"]
    snap = Snapshot()
    if "product" in fields:
        snap.product = decrypt_product(key, pid, row["product_ct"])
    if "attributes" in fields:
        snap.attributes = decrypt_attributes(key, pid, row["attributes_ct"])
    if "note" in fields:
        snap.note = decrypt_note(key, pid, row["note_ct"])
    return snap


INSERT = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, partner_id, origin,
                      quantity, state, fields, snapshot_ct, preference_ref)
VALUES ($1, $2, $3, $4, $5, $6, $7, $11, $8, $9, $10)
RETURNING reorder_id, preference_id, preference_ref, fulfiller, origin, quantity, state, fields,
          snapshot_ct, created_at, updated_at
"""


async def _insert(
    conn: asyncpg.Connection,
    key: DataKey,
    preference: Row,
    fulfiller: str,
    partner_id: uuid.UUID | None,
    origin: str,
    quantity: int,
    fields: list[str],
    preference_ref: uuid.UUID | None = None,
    state: str = "requested",
) -> tuple[Row, Snapshot]:
    reorder_id = uuid.uuid4()
    snap = _snapshot_of(key, preference, fields)
    sealed = key.encrypt(msgspec.json.encode(snap), "reorders", "snapshot", reorder_id)
    row = await conn.fetchrow(
        INSERT,
        key.customer_id,
        reorder_id,
        preference["preference_id"],
        fulfiller,
        partner_id,
        origin,
        quantity,
        fields,
        sealed,
        preference_ref,
        state,
    )
    assert row is not None
    return row, snap


def reorder_view(row: Row, snap: Snapshot | None) -> Reorder:
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
    )


async def create_for_customer(
    conn: asyncpg.Connection,
    vault: Vault,
    customer_id: uuid.UUID,
    preference_id: uuid.UUID,
    data: ReorderCreate,
) -> Reorder:
    """Reorder a preference from the store, or from a partner the customer granted consent to."""
    preference = await conn.fetchrow(GET_PREFERENCE, customer_id, preference_id)
    if preference is None:
        raise NotFound("No such preference.")
    partner_id: uuid.UUID | None = None
    preference_ref: uuid.UUID | None = None
    fields = ALL_FIELDS
    if data.fulfiller != "store":
        partner_id = partner_id_of(data.fulfiller)
        if await conn.fetchval(PARTNER_EXISTS, partner_id) is None:
            raise NotFound("No such partner.")
        granted = await partner_grant(conn, customer_id, partner_id, preference_id)
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
    row, snap = await _insert(
        conn,
        key,
        preference,
        data.fulfiller,
        partner_id,
        "customer",
        data.quantity,
        fields,
        preference_ref,
    )
    return reorder_view(row, snap)


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


def narrowed(snap: Snapshot | None, fields: list[str]) -> Snapshot | None:
    """The snapshot with only ``fields``; None when nothing is left to show."""
    if snap is None or not fields:
        return None
    return Snapshot(
        product=snap.product if "product" in fields else UNSET,
        attributes=snap.attributes if "attributes" in fields else UNSET,
        note=snap.note if "note" in fields else UNSET,
    )


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
        fields = await partner_grant(conn, customer_id, partner.partner_id, preference_id)
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
    row, snap = await _insert(
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
        or await partner_grant(conn, customer_id, partner.partner_id, preference_id) is None
    ):
        raise NotFound("No such preference for this customer reference.")
    first = _partner_reorder.decode(answer)
    row = await conn.fetchrow(ONE_FOR_PARTNER, first.id, partner.partner_id, window_days)
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


def open_snapshot(key: DataKey | None, row: Row) -> Snapshot | None:
    if key is None or row["snapshot_ct"] is None:
        return None
    return _snapshot.decode(
        key.decrypt(row["snapshot_ct"], "reorders", "snapshot", row["reorder_id"])
    )


CUSTOMER_PAGE = """
SELECT reorder_id, preference_id, fulfiller, origin, quantity, state, fields, snapshot_ct,
       created_at, updated_at
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
    items = [reorder_view(row, open_snapshot(key, row)) for row in rows]
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
RETURNING reorder_id, preference_id, fulfiller, origin, quantity, state, fields, snapshot_ct,
          created_at, updated_at
"""
ONE = """
SELECT reorder_id, preference_id, fulfiller, origin, quantity, state, fields, snapshot_ct,
       created_at, updated_at
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
    return reorder_view(row, open_snapshot(key, row))


PROPOSAL = """
SELECT partner_id, preference_id FROM reorders
WHERE customer_id = $1 AND reorder_id = $2 AND state = 'proposed'
FOR UPDATE
"""
CONFIRM = """
UPDATE reorders SET state = 'requested', updated_at = now()
WHERE customer_id = $1 AND reorder_id = $2 AND state = 'proposed'
RETURNING reorder_id, preference_id, fulfiller, origin, quantity, state, fields, snapshot_ct,
          created_at, updated_at
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
            await partner_grant(
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
    return reorder_view(row, open_snapshot(key, row))


def encode_feed_cursor(vault: Vault, partner_id: uuid.UUID, xid: str, reorder_id: uuid.UUID) -> str:
    """The partner's opaque position in its feed (it does not reveal the transaction counter)."""
    return cursors.seal(vault.page_cursors, "partner-feed", partner_id, int(xid), reorder_id)


def decode_feed_cursor(
    vault: Vault, partner_id: uuid.UUID, cursor: str | None
) -> tuple[str, uuid.UUID]:
    """The position a feed cursor holds; 400 for one this partner was not given (or out of range)."""
    if not cursor:
        return "0", uuid.UUID(int=0)
    xid, ident = cursors.open_(vault.page_cursors, "partner-feed", partner_id, cursor)
    if xid < 0:
        raise InvalidInput(cursors.FORGED)
    return str(xid), ident


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
FEED = f"""
SELECT r.customer_id, r.reorder_id, r.preference_id, r.preference_ref, r.origin, r.quantity,
       {STATE_SEEN}, r.fields, r.snapshot_ct, r.created_at, r.updated_at, r.feed_xid::text AS xid,
       pr.ref,
       k.generation, k.wrapped, {PARTNER_SIGHT.replace("$WINDOW", "$5")}
FROM reorders r
LEFT JOIN partner_refs pr ON pr.partner_id = r.partner_id AND pr.customer_id = r.customer_id
LEFT JOIN customer_keys k ON k.customer_id = r.customer_id
{GRANT_IN_FORCE}
WHERE r.partner_id = $1 AND (r.feed_xid, r.reorder_id) > ($2::text::xid8, $3::uuid)
  AND r.feed_xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY r.feed_xid, r.reorder_id
LIMIT $4
"""
ONE_FOR_PARTNER = f"""
SELECT r.reorder_id, r.preference_ref, {STATE_SEEN}, r.fields, r.snapshot_ct,
       {PARTNER_SIGHT.replace("$WINDOW", "$3")}
FROM reorders r
{GRANT_IN_FORCE}
WHERE r.reorder_id = $1 AND r.partner_id = $2
"""


async def feed(
    conn: asyncpg.Connection,
    vault: Vault,
    partner: Credential,
    after: str | None,
    limit: int,
    window_days: int,
) -> PartnerFeed:
    """The next reorders addressed to this partner, in commit-safe order.

    Only reorders created by transactions older than every transaction still running are
    returned, so one that commits late can never land behind a cursor already handed out.
    """
    assert partner.partner_id is not None
    xid, ident = decode_feed_cursor(vault, partner.partner_id, after)
    async with conn.transaction():
        rows = await conn.fetch(FEED, partner.partner_id, xid, ident, limit, window_days)
        items, disclosed = [], []
        for row in rows:
            snap, fields = None, shown_to_partner(row)
            if fields and row["wrapped"] is not None:
                key = vault.envelope.unwrap(row["customer_id"], row["generation"], row["wrapped"])
                snap = narrowed(open_snapshot(key, row), fields)
                disclosed.append((row["customer_id"], [row["preference_id"]], fields))
            items.append(_partner_view(row, row["ref"], snap, fields if snap else []))
        await disclosures.record(conn, partner, "reorder", "reorder", disclosed, vault=vault)
    next_cursor = (
        encode_feed_cursor(vault, partner.partner_id, rows[-1]["xid"], rows[-1]["reorder_id"])
        if rows
        else (after or encode_feed_cursor(vault, partner.partner_id, xid, ident))
    )
    return PartnerFeed(items=items, next=next_cursor)


FOR_PARTNER = f"""
SELECT r.customer_id, r.reorder_id, r.preference_id, r.preference_ref, r.origin, r.quantity,
       {STATE_SEEN}, r.fields, r.snapshot_ct, r.created_at, r.updated_at, pr.ref
FROM reorders r
LEFT JOIN partner_refs pr ON pr.partner_id = r.partner_id AND pr.customer_id = r.customer_id
{GRANT_IN_FORCE}
WHERE r.reorder_id = $1 AND r.partner_id = $2
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
    conn: asyncpg.Connection, partner: Credential, reorder_id: uuid.UUID, state: str
) -> PartnerReorder:
    """Move a reorder on (accepted → fulfilled, or declined); repeating a state is a no-op.

    The answer carries no item details: partners read those from the feed.
    """
    async with conn.transaction():
        row = await conn.fetchrow(FOR_PARTNER, reorder_id, partner.partner_id)
        if row is None:
            raise NotFound("No such reorder.")
        if row["state"] != state:
            if (row["state"], state) not in PARTNER_MOVES:
                raise Conflict(f"A {row['state']} reorder cannot become {state}.")
            moved = await conn.fetchrow(MOVE, row["customer_id"], reorder_id, state)
            assert moved is not None
            return _partner_view({**dict(row), **dict(moved)}, row["ref"], None, [])
        return _partner_view(row, row["ref"], None, [])


PARTNER_PREFERENCES = f"""
WITH target AS (
    SELECT customer_id FROM partner_refs WHERE partner_id = $1 AND ref = $2
), hit AS (
    SELECT g.customer_id, g.fields, g.preference_ids
    FROM target JOIN consents g ON g.customer_id = target.customer_id AND g.audience = $3
    WHERE {IN_FORCE}
), shown AS ({SHOWN})
SELECT hit.customer_id, hit.fields, k.generation, k.wrapped,
       shown.preference_id, shown.rank, shown.status, shown.product_ct, shown.attributes_ct,
       shown.note_ct
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
        rows = await conn.fetch(
            PARTNER_PREFERENCES, partner.partner_id, ref, partner_audience(partner.partner_id)
        )
        if not rows:
            raise NotFound("No such customer reference.")
        first = rows[0]
        key = vault.envelope.unwrap(first["customer_id"], first["generation"], first["wrapped"])
        shown = [shared_view(key, row) for row in rows if row["preference_id"] is not None]
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


CLOSE_WAITING = """
UPDATE reorders SET state = 'cancelled', updated_at = now()
WHERE customer_id = $1 AND partner_id = $2 AND state IN ('proposed', 'requested')
"""
CLOSE_WAITING_OUTSIDE_GRANT = """
UPDATE reorders r SET state = 'cancelled', updated_at = now()
FROM consents g
WHERE r.customer_id = $1 AND r.partner_id = $2 AND r.state IN ('proposed', 'requested')
  AND g.customer_id = r.customer_id AND g.audience = $3
  AND g.preference_ids IS NOT NULL AND NOT r.preference_id = ANY(g.preference_ids)
"""


async def cancel_requested_for_partner(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID
) -> None:
    """After consent to a partner ends, its not-yet-accepted reorders are cancelled."""
    await conn.execute(CLOSE_WAITING, customer_id, partner_id)


async def cancel_outside_grant(
    conn: asyncpg.Connection, customer_id: uuid.UUID, partner_id: uuid.UUID
) -> None:
    """After a grant to a partner changed, its not-yet-accepted reorders of preferences the
    grant no longer covers are cancelled (narrowed fields only narrow what the partner sees)."""
    await conn.execute(
        CLOSE_WAITING_OUTSIDE_GRANT, customer_id, partner_id, partner_audience(partner_id)
    )
