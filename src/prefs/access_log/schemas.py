"""The customer's view of every disclosure."""

from datetime import datetime
from uuid import UUID

import msgspec


class Viewer(msgspec.Struct, kw_only=True):
    kind: str
    id: UUID
    name: str
    store: str | None = None
    # the store's name in the directory (stores) as it is now; null where it has none
    store_name: str | None = None
    partner_id: UUID | None = None


class DisclosedPreference(msgspec.Struct, kw_only=True):
    id: UUID
    name: str | None


class Disclosure(msgspec.Struct, kw_only=True):
    id: UUID
    at: datetime
    who: Viewer
    purpose: str
    via: str
    fields: list[str]
    preferences: list[DisclosedPreference]
    summary: str


class AccessLogPage(msgspec.Struct):
    items: list[Disclosure]
    next: str | None
