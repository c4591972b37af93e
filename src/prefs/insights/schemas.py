"""Discontinued demand: one noisy release a day, groups with a noisy count of at least k."""

from datetime import date

import msgspec

from prefs.products import Product


class DemandGroup(msgspec.Struct):
    product: Product
    size: dict[str, str]
    customers: int


class DiscontinuedDemand(msgspec.Struct):
    released_on: date  # the UTC day the release was drawn; it changes once a day
    epsilon: float  # the release's privacy loss for one customer (differential privacy)
    groups_per_customer: int  # one customer counts in at most this many groups
    k: int  # groups whose noisy count is under k are withheld
    groups: list[DemandGroup]
