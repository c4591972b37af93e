"""Checkout codes: what the customer asks for and gets."""

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from prefs.grants import Fields, PreferenceIds

MIN_TTL, MAX_TTL = 30, 900


class CheckoutCodeRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every field has a default, and no body at all asks for them all: the till sees product
    and attributes of every preference, for the service's default lifetime."""

    fields: Fields = msgspec.field(default_factory=lambda: ["product", "attributes"])
    preferences: Literal["all"] | PreferenceIds = "all"
    ttl_seconds: (
        Annotated[
            int,
            Meta(
                ge=MIN_TTL,
                le=MAX_TTL,
                description=f"the code's lifetime in seconds, from {MIN_TTL} to {MAX_TTL}; when "
                "absent or null, the service's default (PREFS_CHECKOUT_CODE_TTL, 300 unless "
                "the operator set another)",
            ),
        ]
        | None
    ) = None
    # the till that uses the code may add this visit's purchases to the locker, once
    keep_purchases: bool = False


class CheckoutCode(msgspec.Struct, kw_only=True):
    id: UUID  # to end the code early: DELETE /v1/me/checkout-codes/{id}
    code: str
    expires_at: datetime
    fields: list[str]
    preferences: Literal["all"] | list[UUID]
    keep_purchases: bool
    qr_svg: Annotated[
        str,
        Meta(
            description="the code as a QR code for the till to scan: an SVG document (black "
            "on white, a four-module quiet zone, a <title> naming the code), made by segno",
        ),
    ]
