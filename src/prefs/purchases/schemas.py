"""What a till sends when it records a customer's purchases, and the counts it gets back."""

from datetime import date
from typing import Annotated

import msgspec
from msgspec import Meta

from prefs.identifiers import Card
from prefs.products import Attributes
from prefs.text import ProductName, Sku

MAX_ITEMS = 100
Quantity = Annotated[int, Meta(ge=1, le=99)]


class PurchasedItem(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One line of the receipt: the SKU, the size and colour as the till knows them, how many."""

    sku: Sku
    name: ProductName | None = None  # used only when the catalogue does not know the SKU
    attributes: Attributes = msgspec.field(default_factory=dict)
    quantity: Quantity
    purchased_on: date | None = None  # the day of the sale; today (UTC) when not sent


class PurchaseRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of ``card`` (needs the customer's `purchases` grant) or ``code`` (a checkout
    code made with ``keep_purchases``, once)."""

    card: Card | None = None
    code: Card | None = None
    items: Annotated[list[PurchasedItem], Meta(min_length=1, max_length=MAX_ITEMS)]


class PurchaseResult(msgspec.Struct, kw_only=True):
    """Counts only: the till learns nothing else about the locker."""

    added: int  # items that became new preferences
    updated: int  # items counted again on a preference with the same SKU and attributes
    skipped: int  # new items left out because the locker already holds its most preferences
