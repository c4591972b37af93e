"""Partners: the directory customers choose from, and what partners send and see."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from prefs.products import SharedPreference
from prefs.sealed_reorders import Quantity, Snapshot, State
from prefs.text import END


class Partner(msgspec.Struct):
    id: UUID
    name: str
    description: str | None


class PartnerDirectory(msgspec.Struct):
    items: list[Partner]
    # one list shape everywhere, {items, next}: every item fits one page, so next is null
    next: str | None = None


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


class PartnerPreferences(msgspec.Struct):
    """A consenting customer's granted preferences, in the list shape every list has (API
    v1.0 answered the bare array, still served for Accept: application/vnd.prefs.v1.0+json)."""

    items: list[SharedPreference]
    # one list shape everywhere, {items, next}: every item fits one page, so next is null
    next: str | None = None


class StatusChanged(PartnerReorder, kw_only=True):
    """What a status change did: the reorder as the feed shows it now (an accepted one with
    its item, a finished one without), and the state it was in before (the same state when
    the change repeated it)."""

    previous_state: State


class PartnerFeed(msgspec.Struct):
    items: list[PartnerReorder]
    next: str
