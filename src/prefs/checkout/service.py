"""Short-lived checkout codes the customer shows at the till; stored only as a keyed hash."""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from prefs.checkout.schemas import CheckoutCode, CheckoutCodeRequest
from prefs.consents.service import chosen
from prefs.crypto import BlindIndex
from prefs.errors import InvalidInput

# Digits and capitals without look-alikes (0/O, 1/I/L, U/V): easy to read aloud and type.
ALPHABET = "23456789ABCDEFGHJKMNPQRSTWXYZ"
LENGTH = 8
_CODE = re.compile(f"[{ALPHABET}]{{{LENGTH}}}")
_SEPARATORS = re.compile(r"[\s\-]")


def normalise_code(raw: str) -> str:
    code = _SEPARATORS.sub("", raw).upper()
    if not _CODE.fullmatch(code):
        raise InvalidInput(
            f"code must be {LENGTH} characters of {ALPHABET}.",
            errors=[{"key": "code", "source": "body", "message": "not a checkout code"}],
        )
    return code


INSERT = """
INSERT INTO checkout_codes (code_hash, index_version, customer_id, fields, preference_ids, expires_at)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (code_hash) DO NOTHING RETURNING code_hash
"""


async def create(
    conn: asyncpg.Connection,
    index: BlindIndex,
    customer_id: uuid.UUID,
    data: CheckoutCodeRequest,
    default_ttl: int,
) -> CheckoutCode:
    """A fresh random code revealing ``data.fields`` of the chosen preferences until it expires."""
    fields, ids = await chosen(conn, customer_id, data.fields, data.preferences)
    expires_at = datetime.now(UTC) + timedelta(seconds=data.ttl_seconds or default_ttl)
    while True:
        code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
        stored = await conn.fetchval(
            INSERT, index.checkout_code(code), index.primary, customer_id, fields, ids, expires_at
        )
        if stored is not None:
            return CheckoutCode(
                code=code,
                expires_at=expires_at,
                fields=fields,
                preferences="all" if ids is None else ids,
            )
