"""Catalogue shapes: a product as the retailer describes it, a row of an import file."""

from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from prefs.products import Status
from prefs.text import AttributeName, AttributeValue, Label, ProductName, Sku

# the values an attribute takes for this product, e.g. {"waist": ["32", "34"], "colour": ["khaki"]}
Options = Annotated[list[AttributeValue], Meta(min_length=1, max_length=100)]
AttributeOptions = Annotated[dict[AttributeName, Options], Meta(max_length=32)]


class CatalogueProduct(msgspec.Struct, kw_only=True):
    sku: str
    name: str
    brand: str | None
    category: str | None
    status: Status
    attributes: dict[str, list[str]]
    replaced_by: str | None
    updated_at: datetime


class ProductPage(msgspec.Struct, kw_only=True):
    items: list[CatalogueProduct]
    next: str | None


class ImportRow(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One product of an import file (JSON lines or CSV)."""

    sku: Sku
    name: ProductName
    status: Status
    brand: Label | None = None
    category: Label | None = None
    attributes: AttributeOptions = msgspec.field(default_factory=dict)
    replaced_by: Sku | None = None
