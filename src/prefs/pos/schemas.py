"""The till's lookup: a card or a checkout code in, granted fields of ranked preferences out."""

from typing import Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from prefs.identifiers import Card
from prefs.products import Product, Status


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of ``card`` (needs the customer's `pos` grant) or ``code``."""

    card: Card | None = None
    code: Card | None = None


class TillPreference(msgspec.Struct, kw_only=True):
    """A preference as the till sees it: no id (it needs none to serve the customer, and an
    id would let it link the customer to what anyone else holds), ranked 1..n among the shown."""

    rank: int
    status: Status
    product: Product | UnsetType = UNSET
    attributes: dict[str, str] | UnsetType = UNSET
    note: str | None | UnsetType = UNSET


class LookupResult(msgspec.Struct, kw_only=True):
    via: Literal["card", "code"]
    fields: list[str]
    preferences: list[TillPreference]
    disclosure_id: UUID
