"""A product as customers keep it, and a preference as an audience is shown it.

Shared by every capability that shows a preference (the till, partners, reorders, demand): the
shapes live here, the sealing and opening in prefs.sealed_preferences.
"""

from datetime import date
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from prefs.text import AttributeName, AttributeValue, Label, ProductName, Sku

Status = Literal["available", "discontinued"]
MAX_ATTRIBUTES = 32  # the most attributes (size, colour…) one preference keeps
Attributes = Annotated[dict[AttributeName, AttributeValue], Meta(max_length=MAX_ATTRIBUTES)]
MAX_PREFERENCES = 500  # the most preferences one customer's locker holds


class Product(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``sku`` is null for a product its customer typed from memory (a till always names it):
    such a product takes no catalogue status and matches no purchase."""

    sku: Sku | None = None
    name: ProductName
    brand: Label | None = None
    category: Label | None = None


class Source(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a preference came from when its customer did not type it: a till at ``store``
    added what they bought on ``purchased_on`` (the first purchase). Personal, so sealed."""

    kind: Literal["till"]
    store: str
    purchased_on: date


class SharedPreference(msgspec.Struct, kw_only=True):
    """A preference as an audience sees it: fields not granted are absent."""

    id: UUID
    rank: int
    status: Status
    product: Product | UnsetType = UNSET
    attributes: dict[str, str] | UnsetType = UNSET
    note: str | None | UnsetType = UNSET
