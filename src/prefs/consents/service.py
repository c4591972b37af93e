"""Granting, changing, withdrawing and expiring consent; every change is a ledger receipt."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from msgspec import UNSET

from prefs import partner_refs
from prefs.consents import kantara, ledger
from prefs.consents.schemas import (
    CancelledReorder,
    Consent,
    ConsentChange,
    ConsentGrant,
    Controller,
    KantaraReceipt,
    Purpose,
    Receipt,
    Recipient,
    State,
)
from prefs.crypto import Vault
from prefs.customer_keys import lock_customer
from prefs.db import Row
from prefs.errors import InvalidInput, NotFound
from prefs.events import Followed, GrantEnded, GrantGiven, ReorderCancelled, follow
from prefs.grants import (
    IN_FORCE,
    PURCHASES,
    audience_kind,
    chosen,
    partner_audience_sql,
    partner_of,
)
from prefs.settings import Settings

# What each audience does with what it is shown, named with W3C DPV purposes.
PURPOSES = {
    "pos": (
        "Recognise you at the till and show your preferences at checkout",
        ["ServicePersonalisation"],
    ),
    "partner": (
        "Let a partner you chose make or supply your items again",
        ["CustomerOrderManagement", "ServiceProvision"],
    ),
    "insights": (
        "Count, anonymously, how many people want a discontinued product back",
        ["ImproveExistingProductsAndServices"],
    ),
    "purchases": (
        "Let store tills add what you buy to your locker, to find and reorder it later",
        ["ServicePersonalisation"],
    ),
}
# The personal-data categories (DPV-PD) behind each field a grant can name.
PII_CATEGORIES = {
    "product": "PurchasesAndSpendingHabit",
    "attributes": "PhysicalCharacteristic",
    "note": "Preference",
}
# what a `purchases` grant lets tills write into the locker: the products bought and their sizes
PURCHASES_PII = ["PurchasesAndSpendingHabit", "PhysicalCharacteristic"]


PARTNER = "SELECT name FROM partners WHERE partner_id = $1 AND retired_at IS NULL"


async def recipient(conn: asyncpg.Connection, audience: str) -> Recipient:
    """Who an audience is; unknown audiences and unknown or retired partners are a 404."""
    if audience == "pos":
        return Recipient(kind="pos", name="Store tills at checkout")
    if audience == "insights":
        return Recipient(kind="insights", name="Merchandising (anonymous counts only)")
    if audience == PURCHASES:
        return Recipient(kind="purchases", name="Store tills, adding what you buy to your locker")
    partner_id = partner_of(audience)  # only the canonical form is stored
    if partner_id is None:
        raise NotFound("No such audience or partner.")
    name = await conn.fetchval(PARTNER, partner_id)
    if name is None:
        raise NotFound("No such partner.")
    return Recipient(kind="partner", name=name, id=partner_id)


def terms(settings: Settings) -> Controller:
    """The controller and the terms consents are given under now, as each receipt keeps them."""
    return Controller(
        name=settings.controller, policy_url=settings.policy_url, jurisdiction=settings.jurisdiction
    )


def _receipt(
    customer_id: uuid.UUID,
    audience: str,
    who: Recipient,
    controller: str | Controller,
    state: State,
    fields: list[str],
    preferences: Any,
    expires_at: datetime | None,
) -> Receipt:
    text, dpv = PURPOSES[who.kind]
    return Receipt(
        receipt_id=uuid.uuid4(),
        timestamp=datetime.now(UTC),
        collection_method="self-service" if state != "ConsentExpired" else "expiry",
        principal=customer_id,
        controller=controller
        if isinstance(controller, Controller)
        else Controller(name=controller),
        audience=audience,
        recipient=who,
        purposes=[
            Purpose(
                purpose=text,
                dpv=dpv,
                consent_type="EXPLICIT",
                primary_purpose=True,
                termination=expires_at.isoformat() if expires_at else "until withdrawn",
                third_party_disclosure=who.kind == "partner",
            )
        ],
        pii_categories=(
            PURCHASES_PII if who.kind == "purchases" else [PII_CATEGORIES[f] for f in fields]
        ),
        fields=fields,
        preferences=preferences,
        expires_at=expires_at,
        state=state,
    )


def consent_view(row: Row, who: str) -> Consent:
    ids = row["preference_ids"]
    return Consent(
        audience=row["audience"],
        recipient=who,
        fields=list(row["fields"]),
        preferences="all" if ids is None else list(ids),
        expires_at=row["expires_at"],
        granted_at=row["granted_at"],
        updated_at=row["updated_at"],
        receipt_id=row["receipt_id"],
    )


LIST = f"""
SELECT g.audience, g.fields, g.preference_ids, g.expires_at, g.granted_at, g.updated_at, g.receipt_id,
       p.name AS partner_name
FROM consents g
LEFT JOIN partners p ON g.audience = {partner_audience_sql("p.partner_id")}
WHERE g.customer_id = $1 AND {IN_FORCE}
ORDER BY g.audience
"""


async def live_consents(conn: asyncpg.Connection, customer_id: uuid.UUID) -> list[Consent]:
    """The grants in force, each with its recipient as a person reads it (reads only)."""
    consents = []
    for row in await conn.fetch(LIST, customer_id):
        kind = audience_kind(row["audience"])
        name = (
            row["partner_name"]
            if kind == "partner"
            else (await recipient(conn, row["audience"])).name
        )
        consent = consent_view(row, name or "A partner that has left")
        partner_id = partner_of(row["audience"])
        if partner_id is not None:
            consent.reference = await partner_refs.reference(conn, partner_id, customer_id)
        consents.append(consent)
    return consents


MAX_CONSENT_YEARS = 100


def check_expiry(expires_at: datetime) -> None:
    """A consent's end: with a time zone, in the future, and at most MAX_CONSENT_YEARS ahead
    (so that no instant the database cannot hold, such as 9999-12-31T23:59:59-14:00, reaches it)."""

    def refuse(detail: str, message: str) -> InvalidInput:
        return InvalidInput(
            detail, errors=[{"key": "expires_at", "source": "body", "message": message}]
        )

    if expires_at.tzinfo is None:
        raise refuse(
            "expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z.", "needs a time zone"
        )
    now = datetime.now(UTC)
    if expires_at <= now:
        raise refuse("expires_at must be in the future.", "in the past")
    if expires_at - now > timedelta(days=365 * MAX_CONSENT_YEARS):
        raise refuse(
            f"expires_at must be within {MAX_CONSENT_YEARS} years from now (or null: until "
            "withdrawn).",
            f"more than {MAX_CONSENT_YEARS} years ahead",
        )


def _refused(key: str, detail: str, message: str) -> InvalidInput:
    return InvalidInput(detail, errors=[{"key": key, "source": "body", "message": message}])


async def _scope(
    conn: asyncpg.Connection, customer_id: uuid.UUID, audience: str, data: ConsentGrant
) -> tuple[list[str], list[uuid.UUID] | None]:
    """What a grant covers: the fields (canonical order) and preferences (None: all). A
    `purchases` grant is shown nothing: it covers no fields and takes none."""
    if audience == PURCHASES:
        for key in ("fields", "preferences"):
            if getattr(data, key) is not UNSET:
                raise _refused(
                    key,
                    f"A purchases grant shows nothing to anyone, so it takes no {key}: send "
                    "{} or just expires_at.",
                    "not taken by purchases",
                )
        return [], None
    if data.fields is UNSET:
        raise _refused(
            "fields",
            "fields is required: which of product, attributes and note this audience may see, "
            'e.g. {"fields": ["product", "attributes"]}.',
            "required",
        )
    preferences = "all" if data.preferences is UNSET else data.preferences
    return await chosen(conn, customer_id, data.fields, preferences)


UPSERT = """
INSERT INTO consents (customer_id, audience, fields, preference_ids, expires_at, receipt_id)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (customer_id, audience) DO UPDATE
SET fields = EXCLUDED.fields, preference_ids = EXCLUDED.preference_ids,
    expires_at = EXCLUDED.expires_at, receipt_id = EXCLUDED.receipt_id, updated_at = now(),
    granted_at = CASE WHEN consents.expires_at IS NOT NULL AND consents.expires_at <= now()
                      THEN now() ELSE consents.granted_at END
RETURNING audience, fields, preference_ids, expires_at, granted_at, updated_at, receipt_id
"""


async def grant(
    conn: asyncpg.Connection,
    vault: Vault,
    controller: str | Controller,
    customer_id: uuid.UUID,
    audience: str,
    data: ConsentGrant,
) -> ConsentChange:
    """Give or change consent for one audience."""
    who = await recipient(conn, audience)
    if data.expires_at is not None:
        check_expiry(data.expires_at)
    fields, ids = await _scope(conn, customer_id, audience, data)
    async with conn.transaction():
        await expire_due(conn, vault, controller, customer_id, audience)
        receipt = _receipt(
            customer_id,
            audience,
            who,
            controller,
            "ConsentGiven",
            fields,
            "all" if ids is None else ids,
            data.expires_at,
        )
        entry = await ledger.append(conn, vault.index, receipt)
        row = await conn.fetchrow(
            UPSERT, customer_id, audience, fields, ids, data.expires_at, receipt.receipt_id
        )
        assert row is not None
        followed = await follow(conn, vault, GrantGiven(customer_id, audience))
        return ConsentChange(
            consent=consent_view(row, who.name),
            receipt=receipt,
            ledger=entry,
            cancelled_reorders=cancelled(followed),
        )


REMOVE = """
DELETE FROM consents WHERE customer_id = $1 AND audience = $2
RETURNING fields, preference_ids, expires_at
"""


async def withdraw(
    conn: asyncpg.Connection,
    vault: Vault,
    controller: str | Controller,
    customer_id: uuid.UUID,
    audience: str,
) -> ConsentChange | None:
    """Withdraw consent: effective for the very next request, recorded in the ledger; None when
    there was none in force (nothing to withdraw, nothing recorded)."""
    async with conn.transaction():
        await expire_due(conn, vault, controller, customer_id, audience)
        row = await conn.fetchrow(REMOVE, customer_id, audience)
        if row is None:
            return None
        try:
            who = await recipient(conn, audience)
        except NotFound:
            who = Recipient(kind="partner", name="A partner that has left")
        ids = row["preference_ids"]
        receipt = _receipt(
            customer_id,
            audience,
            who,
            controller,
            "ConsentWithdrawn",
            list(row["fields"]),
            "all" if ids is None else list(ids),
            row["expires_at"],
        )
        entry = await ledger.append(conn, vault.index, receipt)
        followed = await follow(conn, vault, GrantEnded(customer_id, audience))
        return ConsentChange(
            consent=None, receipt=receipt, ledger=entry, cancelled_reorders=cancelled(followed)
        )


def cancelled(followed: Sequence[Followed]) -> list[CancelledReorder]:
    """The reorders a consent change cancelled, as its answer tells them."""
    return [
        CancelledReorder(
            id=item.reorder_id,
            preference_id=item.preference_id,
            quantity=item.quantity,
            origin=item.origin,  # type: ignore[arg-type]
        )
        for item in followed
        if isinstance(item, ReorderCancelled)
    ]


DUE_CUSTOMERS = """
SELECT DISTINCT customer_id FROM consents
WHERE expires_at <= now() AND ($1::text IS NULL OR audience = $1)
"""
DUE = """
DELETE FROM consents
WHERE expires_at <= now() AND customer_id = $1 AND ($2::text IS NULL OR audience = $2)
RETURNING customer_id, audience, fields, preference_ids, expires_at
"""


async def expire_due(
    conn: asyncpg.Connection,
    vault: Vault,
    controller: str | Controller,
    customer_id: uuid.UUID | None = None,
    audience: str | None = None,
) -> int:
    """Record every grant past its expiry as ConsentExpired and remove it; returns how many.

    Lookups already ignore expired grants; this writes them into the ledger.
    """
    if customer_id is None:
        return sum(
            [
                await expire_due(conn, vault, controller, row["customer_id"], audience)
                for row in await conn.fetch(DUE_CUSTOMERS, audience)
            ]
        )
    async with conn.transaction():
        # Every consent change locks the customer's ledger head before any consent row (grant
        # and withdraw start here): one lock order, so concurrent changes cannot deadlock.
        await lock_customer(conn, customer_id)
        rows = await conn.fetch(DUE, customer_id, audience)
        for row in rows:
            try:
                who = await recipient(conn, row["audience"])
            except NotFound:
                who = Recipient(kind="partner", name="A partner that has left")
            ids = row["preference_ids"]
            receipt = _receipt(
                row["customer_id"],
                row["audience"],
                who,
                controller,
                "ConsentExpired",
                list(row["fields"]),
                "all" if ids is None else list(ids),
                row["expires_at"],
            )
            await ledger.append(conn, vault.index, receipt)
            await follow(conn, vault, GrantEnded(row["customer_id"], row["audience"]))
        return len(rows)


async def kantara_receipt(
    conn: asyncpg.Connection, settings: Settings, customer_id: uuid.UUID, receipt_id: uuid.UUID
) -> KantaraReceipt:
    """One of the customer's receipts as a Kantara v1.1 document, from its ledger record;
    anyone else's receipt is the same 404 as one that does not exist."""
    found = await ledger.record(conn, customer_id, receipt_id)
    if found is None:
        raise NotFound("You have no receipt with this id.")
    return kantara.document(found, settings)
