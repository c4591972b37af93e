"""Audiences and the grant in force: who a customer shares with, and what a live grant shows.

Every capability that discloses something asks the same questions here: which audience is this
(`pos`, `insights`, `partner:<id>`, or `purchases`, which is shown nothing but lets tills add
what the customer buys), is a grant to it in force now, and which fields of which
preferences does it cover. Granting and withdrawing (and the receipts) are prefs.consents'.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

import asyncpg
from msgspec import Meta

from prefs.errors import InvalidInput
from prefs.text import END, UUID_TEXT

POS = "pos"
INSIGHTS = "insights"
PURCHASES = "purchases"  # tills may add what the customer buys; shown nothing, so no fields
PARTNER_PREFIX = "partner:"

Field = Literal["product", "attributes", "note"]
FIELD_ORDER: list[Field] = ["product", "attributes", "note"]
Fields = Annotated[list[Field], Meta(min_length=1, max_length=3)]
PreferenceIds = Annotated[list[uuid.UUID], Meta(min_length=1, max_length=500)]
Audience = Annotated[
    str, Meta(max_length=64, pattern=r"^(pos|insights|purchases|partner:" + UUID_TEXT + ")" + END)
]

# A grant (alias g) in force now. Expired grants are recorded as expired and removed by the
# expiry job (prefs.consents.expire_due); until then every read skips them by this predicate.
IN_FORCE = "(g.expires_at IS NULL OR g.expires_at > now())"


def partner_audience(partner_id: uuid.UUID) -> str:
    """The audience a grant to this partner is stored under."""
    return f"{PARTNER_PREFIX}{partner_id}"


def partner_audience_sql(partner_column: str) -> str:
    """SQL for the audience of the partner in ``partner_column`` (to join grants on)."""
    return f"'{PARTNER_PREFIX}' || {partner_column}::text"


def audience_kind(audience: str) -> str:
    """`pos`, `insights`, `purchases` or `partner`."""
    return audience.split(":", 1)[0]


def partner_of(audience: str) -> uuid.UUID | None:
    """The partner a `partner:<id>` audience names, in canonical form only; else None."""
    kind, _, partner = audience.partition(":")
    if kind != "partner":
        return None
    try:
        partner_id = uuid.UUID(partner)
    except ValueError:
        return None
    return partner_id if str(partner_id) == partner else None


LIVE = f"""
SELECT g.fields, g.preference_ids FROM consents g
WHERE g.customer_id = $1 AND g.audience = $2 AND {IN_FORCE}
"""
# FOR SHARE: a withdrawal waits for what is being done under the grant (a reorder placed), then
# ends it.
LIVE_HELD = LIVE + " FOR SHARE"


async def live_grant(
    conn: asyncpg.Connection, customer_id: uuid.UUID, audience: str, *, hold: bool = False
) -> asyncpg.Record | None:
    """The grant in force to ``audience`` (fields, preference_ids), or None; ``hold`` keeps it
    from being withdrawn until the transaction ends."""
    return await conn.fetchrow(LIVE_HELD if hold else LIVE, customer_id, audience)


def covers(grant: asyncpg.Record, preference_id: uuid.UUID) -> bool:
    """Whether a grant names this preference (or all of them)."""
    ids = grant["preference_ids"]
    return ids is None or preference_id in ids


async def partner_fields(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    partner_id: uuid.UUID,
    preference_id: uuid.UUID,
) -> list[str] | None:
    """The fields a live grant to the partner reveals of this preference, or None; the grant is
    held (a withdrawal waits for what is being done under it, then ends it)."""
    grant = await live_grant(conn, customer_id, partner_audience(partner_id), hold=True)
    if grant is None or not covers(grant, preference_id):
        return None
    return list(grant["fields"])


OWNED = "SELECT preference_id FROM preferences WHERE customer_id = $1 AND preference_id = ANY($2::uuid[])"


async def chosen(
    conn: asyncpg.Connection,
    customer_id: uuid.UUID,
    fields: Sequence[str],
    preferences: Sequence[uuid.UUID] | str,
) -> tuple[list[str], list[uuid.UUID] | None]:
    """Fields in canonical order, and the chosen preference ids (None for "all"), which must
    all be the customer's own."""
    ordered = sorted(set(fields), key=FIELD_ORDER.index)  # type: ignore[arg-type]
    if isinstance(preferences, str):
        return ordered, None
    ids = sorted(set(preferences))
    owned = await conn.fetch(OWNED, customer_id, ids)
    if len(owned) != len(ids):
        raise InvalidInput(
            "preferences names ids that are not among your preferences.",
            errors=[{"key": "preferences", "source": "body", "message": "unknown preference ids"}],
        )
    return ordered, ids
