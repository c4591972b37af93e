"""What identifies a customer at a till: the loyalty card and the checkout code, each rule once.

The normalising functions (what the services accept), the text type the schemas decode, and
the OpenAPI patterns that document the accepted forms all live here, side by side.
"""

from __future__ import annotations

import re
from typing import Annotated

from msgspec import Meta

from prefs.errors import InvalidInput
from prefs.text import SINGLE_LINE

# --- the loyalty card -----------------------------------------------------------------------------
# As sent: up to 64 characters on one line; the rule applied after decoding is normalise_card's.
Card = Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE)]
_CARD_SEPARATORS = re.compile(r"[ \-]")
_CARD_DIGITS = re.compile(r"[0-9]{6,24}")
# OpenAPI for the forms normalise_card accepts.
CARD_NUMBER = {"type": "string", "maxLength": 64, "pattern": r"^[ -]*([0-9][ -]*){6,24}$"}


def normalise_card(raw: str) -> str:
    """Loyalty card numbers: spaces and dashes dropped, 6–24 ASCII digits left."""
    card = _CARD_SEPARATORS.sub("", raw)
    if not _CARD_DIGITS.fullmatch(card):
        raise InvalidInput(
            "card must be 6 to 24 ASCII digits (spaces and dashes are ignored).",
            errors=[{"key": "card", "source": "body", "message": "6 to 24 ASCII digits"}],
        )
    return card


# --- the checkout code ----------------------------------------------------------------------------
# Digits and capitals without look-alikes (0/O, 1/I/L, U/V): easy to read aloud and type.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTWXYZ"
CODE_LENGTH = 8
_CODE = re.compile(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}")
_CODE_SEPARATORS = re.compile(r"[\s\-]")
# OpenAPI for the forms normalise_code accepts: any case, spaces and dashes ignored.
_SPACE = r"[ \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000-]"  # and dashes (no line separators)
CHECKOUT_CODE = {
    "type": "string",
    "maxLength": 64,
    "pattern": rf"^{_SPACE}*([2-9A-HJKMNP-TW-Za-hjkmnp-tw-z]{_SPACE}*){{{CODE_LENGTH}}}$",
}


def normalise_code(raw: str) -> str:
    """Checkout codes: spaces and dashes dropped, upper-cased, CODE_LENGTH of CODE_ALPHABET."""
    code = _CODE_SEPARATORS.sub("", raw).upper()
    if not _CODE.fullmatch(code):
        raise InvalidInput(
            f"code must be {CODE_LENGTH} characters of {CODE_ALPHABET}.",
            errors=[{"key": "code", "source": "body", "message": "not a checkout code"}],
        )
    return code


def card_or_code(card: str | None, code: str | None) -> tuple[str | None, str | None]:
    """A till request's card or code, normalised: exactly one of the two (400 otherwise)."""
    if (card is None) == (code is None):
        raise InvalidInput("Send exactly one of card or code.")
    if card is not None:
        return normalise_card(card), None
    assert code is not None
    return None, normalise_code(code)


# a till request's card or code, in OpenAPI: exactly one of the two
CARD_OR_CODE = {
    "properties": {
        "card": {"anyOf": [CARD_NUMBER, {"type": "null"}]},
        "code": {"anyOf": [CHECKOUT_CODE, {"type": "null"}]},
    },
    "oneOf": [
        {"required": ["card"], "properties": {"card": {"type": "string"}}},
        {"required": ["code"], "properties": {"code": {"type": "string"}}},
    ],
}
