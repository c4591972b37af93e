"""Reorders: what customers and partners send, and what each of them sees."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from prefs.products import Product
from prefs.text import END, UUID_TEXT

Quantity = Annotated[int, Meta(ge=1, le=99)]
Fulfiller = Annotated[str, Meta(max_length=64, pattern=r"^(store|partner:" + UUID_TEXT + ")" + END)]
PartnerRef = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+" + END)]
State = Literal["proposed", "requested", "accepted", "fulfilled", "declined", "cancelled"]


class ReorderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    quantity: Quantity
    fulfiller: Fulfiller = "store"


class PartnerReorderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    customer: PartnerRef
    preference: UUID
    quantity: Quantity


class StatusChange(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["accepted", "fulfilled", "declined"]


class Snapshot(msgspec.Struct, kw_only=True):
    """What was disclosed when the reorder was placed; later edits do not change it."""

    product: Product | UnsetType = UNSET
    attributes: dict[str, str] | UnsetType = UNSET
    note: str | None | UnsetType = UNSET


class Reorder(msgspec.Struct, kw_only=True):
    id: UUID
    preference_id: UUID
    fulfiller: str
    origin: Literal["customer", "partner"]
    quantity: int
    state: State
    fields: list[str]
    item: Snapshot | None
    created_at: datetime
    updated_at: datetime


class ReorderList(msgspec.Struct):
    items: list[Reorder]
    next: str | None


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
