"""Stores: the directory customers pick from, and a store's queue of reorders as its tills see it."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from prefs.sealed_reorders import Snapshot, State
from prefs.text import END, SINGLE_LINE, STORE_ID_TEXT, Label

StoreId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^" + STORE_ID_TEXT + END)]
StoreName = Label
Address = Annotated[str, Meta(min_length=1, max_length=300, pattern=SINGLE_LINE)]


class StoreEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A store as the operator adds it (`prefs stores add`)."""

    id: StoreId
    name: StoreName
    address: Address | None = None


class Store(msgspec.Struct, kw_only=True):
    id: str
    name: str
    address: str | None


class StoreDirectory(msgspec.Struct, kw_only=True):
    items: list[Store]
    next: str | None


class StoreRecord(msgspec.Struct, kw_only=True):
    """A store as the operator sees it (closed ones too)."""

    id: str
    name: str
    address: str | None
    created_at: datetime
    closed_at: datetime | None


class StoreStatusChange(msgspec.Struct, forbid_unknown_fields=True):
    state: Literal["accepted", "ready", "collected", "declined"]


class StoreReorder(msgspec.Struct, kw_only=True):
    """A reorder as the store's tills see it: what the customer chose to reorder (``item``,
    the snapshot taken when they placed it) while the store has it to do (requested, accepted,
    ready); nothing of it once it is collected, declined or cancelled. No customer identifier:
    the customer shows the reorder on their page when they collect."""

    id: UUID
    quantity: int
    state: State
    fields: list[str]
    item: Snapshot | None
    created_at: datetime
    updated_at: datetime


class StoreQueue(msgspec.Struct, kw_only=True):
    items: list[StoreReorder]
    next: str
