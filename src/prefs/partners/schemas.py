"""Partners: the directory customers choose from, and what partners send and see."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from prefs.sealed_reorders import Quantity, Snapshot, State
from prefs.text import END


class Partner(msgspec.Struct):
    id: UUID
    name: str
    description: str | None


class PartnerDirectory(msgspec.Struct):
    items: list[Partner]


PartnerRef = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+" + END)]


class PartnerReorderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    customer: PartnerRef
    preference: UUID
    quantity: Quantity


class StatusChange(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["accepted", "fulfilled", "declined"]


class PartnerReorder(msgspec.Struct, kw_only=True):
    """A reorder as its partner sees it: a pairwise customer reference, its own id for the
    preference, and of the item only what the customer's grant in force allows (``fields``).

    A partner's own reorder is ``proposed`` until the customer confirms it (``requested``).
    ``item`` is null once the reorder is finished (fulfilled, declined or cancelled), or some
    time after it was accepted.
    """

    id: UUID
    customer: str
    preference_id: UUID
    origin: Literal["customer", "partner"]
    quantity: int
    state: State
    fields: list[str]
    item: Snapshot | None
    created_at: datetime
    updated_at: datetime


class PartnerFeed(msgspec.Struct):
    items: list[PartnerReorder]
    next: str
