"""Preference shapes: what customers send and what they get back."""

from datetime import date, datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, Meta, UnsetType

from prefs.products import MAX_ATTRIBUTES, MAX_PREFERENCES, Attributes, Product, Source, Status
from prefs.text import AttributeName, AttributeValue, Label, Note, ProductName, Sku

__all__ = ["MAX_PREFERENCES", "Attributes"]  # shared with the till's purchases (prefs.products)

Rank = Annotated[int, Meta(ge=1, le=MAX_PREFERENCES)]
Purchases = Annotated[int, Meta(ge=0, le=1_000_000)]


class PreferenceCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    product: Product
    attributes: Attributes = msgspec.field(default_factory=dict)
    note: Note | None = None
    rank: Rank | None = None
    # the catalogue's for a product it knows (another is a 409), else the one sent, or available
    status: Status | UnsetType = UNSET
    purchases: Purchases = 0
    last_purchased_on: date | None = None


class ProductPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A JSON Merge Patch (RFC 7396) of a product: members sent replace, null removes one; the
    name stays (it cannot be null)."""

    sku: Sku | None | UnsetType = UNSET
    name: ProductName | UnsetType = UNSET
    brand: Label | None | UnsetType = UNSET
    category: Label | None | UnsetType = UNSET


# an attribute set to null is removed; the attributes after the patch are still at most 32
AttributesPatch = Annotated[
    dict[AttributeName, AttributeValue | None], Meta(max_length=2 * MAX_ATTRIBUTES)
]


class PreferenceUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A JSON Merge Patch (RFC 7396): only the members present change, nested objects member by
    member (``attributes: {"size": "XL"}`` keeps the other attributes, null removes one);
    ``note``, ``last_purchased_on`` and ``attributes`` (all of them) may be set to null."""

    product: ProductPatch | UnsetType = UNSET
    attributes: AttributesPatch | None | UnsetType = UNSET
    note: Note | None | UnsetType = UNSET
    rank: Rank | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    purchases: Purchases | UnsetType = UNSET
    last_purchased_on: date | None | UnsetType = UNSET


class Preference(msgspec.Struct, kw_only=True):
    id: UUID
    product: Product
    attributes: dict[str, str]
    note: str | None
    rank: int
    status: Status
    # whose word ``status`` is: the shop's catalogue (it knows the SKU; the customer cannot
    # change it) or the customer's own
    status_source: Literal["catalogue", "customer"] = "customer"
    purchases: int
    last_purchased_on: date | None
    source: Source | None  # set when a till added it from a purchase; null when typed
    version: int
    created_at: datetime
    updated_at: datetime


class PreferenceList(msgspec.Struct, kw_only=True):
    """Every preference in one page (a locker holds at most ``limit``), in the list shape every
    list has; ``count`` and ``limit`` are kept from before ``next`` for clients reading them."""

    items: list[Preference]
    next: str | None = None
    count: int
    limit: int = MAX_PREFERENCES
