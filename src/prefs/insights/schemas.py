"""Discontinued demand: k-anonymous counts only."""

import msgspec

from prefs.preferences.schemas import Product


class DemandGroup(msgspec.Struct):
    product: Product
    size: dict[str, str]
    customers: int


class DiscontinuedDemand(msgspec.Struct):
    k: int
    groups: list[DemandGroup]
