"""Confirming a loyalty card at the till."""

import msgspec

from prefs.identifiers import Card


class CardConfirmation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The card the till scanned and the checkout code its holder shows."""

    card: Card
    code: Card
