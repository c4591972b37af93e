"""Reorders: what customers and partners send, and what each of them sees."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from prefs.sealed_reorders import Quantity, Snapshot, State
from prefs.text import END, UUID_TEXT

Fulfiller = Annotated[str, Meta(max_length=64, pattern=r"^(store|partner:" + UUID_TEXT + ")" + END)]


class ReorderCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    quantity: Quantity
    fulfiller: Fulfiller = "store"


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
