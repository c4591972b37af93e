"""Reorders: what customers and partners send, and what each of them sees."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from prefs.grants import Fields
from prefs.sealed_reorders import Quantity, Snapshot, State
from prefs.text import END, STORE_ID_TEXT, UUID_TEXT

# a bare `store` (what v1 took) is refused with the description: it says to name a store
Fulfiller = Annotated[
    str,
    Meta(
        max_length=72,
        pattern=r"^(store:" + STORE_ID_TEXT + "|partner:" + UUID_TEXT + ")" + END,
        description="name the store, `store:<store id>` (GET /v1/stores lists them), or the "
        "partner, `partner:<partner id>`",
    ),
]


class ReorderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    quantity: Quantity
    fulfiller: Fulfiller
    # what a store may see of the preference: product and attributes unless the customer adds
    # their note (a partner sees what the customer's consent to it allows: not set here)
    fields: Fields | UnsetType = UNSET


class ReorderStore(msgspec.Struct, kw_only=True):
    """The store a reorder is addressed to, as the directory names it now."""

    id: str
    name: str
    address: str | None
    closed: bool


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
    store: ReorderStore | None = None


class ReorderList(msgspec.Struct):
    items: list[Reorder]
    next: str | None
