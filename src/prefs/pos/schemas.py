"""The till's lookup: a card or a checkout code in, granted fields of ranked preferences out."""

from typing import Literal
from uuid import UUID

import msgspec

from prefs.preferences.schemas import SharedPreference
from prefs.text import Card


class LookupRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Exactly one of ``card`` (needs the customer's `pos` grant) or ``code``."""

    card: Card | None = None
    code: Card | None = None


class LookupResult(msgspec.Struct, kw_only=True):
    via: Literal["card", "code"]
    fields: list[str]
    preferences: list[SharedPreference]
    disclosure_id: UUID
