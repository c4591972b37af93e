"""The customer's own profile."""

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

from prefs.identifiers import Card


class Enrolment(msgspec.Struct, forbid_unknown_fields=True):
    card: Card | None = None


class ProfileUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Set the loyalty card, or clear it with null."""

    card: Card | None


class Profile(msgspec.Struct, kw_only=True):
    id: UUID
    card: str | None
    # pending: added, not yet confirmed at a till (tills cannot find it); confirmed: proven
    card_status: Literal["pending", "confirmed"] | None
    preferences: int
    created_at: datetime
    updated_at: datetime
