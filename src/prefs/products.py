"""A product as customers keep it, and a preference as an audience is shown it.

Shared by every capability that shows a preference (the till, partners, reorders, demand): the
shapes live here, the sealing and opening in prefs.sealed_preferences.
"""

from typing import Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from prefs.text import Label, ProductName, Sku

Status = Literal["available", "discontinued"]


class Product(msgspec.Struct, forbid_unknown_fields=True):
    sku: Sku
    name: ProductName
    brand: Label | None = None
    category: Label | None = None


class SharedPreference(msgspec.Struct, kw_only=True):
    """A preference as an audience sees it: fields not granted are absent."""

    id: UUID
    rank: int
    status: Status
    product: Product | UnsetType = UNSET
    attributes: dict[str, str] | UnsetType = UNSET
    note: str | None | UnsetType = UNSET
