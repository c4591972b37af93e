"""Short-lived checkout codes the customer shows at the till; stored only as a keyed hash."""

from __future__ import annotations

import io
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import segno

from prefs.checkout.schemas import CheckoutCode, CheckoutCodeRequest
from prefs.crypto import BlindIndex
from prefs.errors import NotFound
from prefs.grants import chosen
from prefs.identifiers import CODE_ALPHABET, CODE_LENGTH

INSERT = """
INSERT INTO checkout_codes (code_hash, index_version, customer_id, fields, preference_ids,
                            expires_at, keep_purchases)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (code_hash) DO NOTHING RETURNING code_id
"""


async def create(
    conn: asyncpg.Connection,
    index: BlindIndex,
    customer_id: uuid.UUID,
    data: CheckoutCodeRequest,
    default_ttl: int,
) -> CheckoutCode:
    """A fresh random code revealing ``data.fields`` of the chosen preferences until it expires
    or is ended; the first store whose till uses it is the only one where it works. With
    ``keep_purchases``, that till may also add this visit's purchases to the locker, once."""
    fields, ids = await chosen(conn, customer_id, data.fields, data.preferences)
    expires_at = datetime.now(UTC) + timedelta(seconds=data.ttl_seconds or default_ttl)
    while True:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        code_id = await conn.fetchval(
            INSERT,
            index.checkout_code(code),
            index.primary,
            customer_id,
            fields,
            ids,
            expires_at,
            data.keep_purchases,
        )
        if code_id is not None:
            return CheckoutCode(
                id=code_id,
                code=code,
                expires_at=expires_at,
                fields=fields,
                preferences="all" if ids is None else ids,
                keep_purchases=data.keep_purchases,
                qr_svg=qr_svg(code),
            )


def qr_svg(code: str) -> str:
    """``code`` as a QR code for the till to scan: an SVG with a quiet zone and a title.

    Only its keyed hash is stored, so the QR code is drawn now, with the code. Never a Micro QR
    code (``make_qr``): few till scanners read those. segno raises the error correction to the
    highest level that still fits the smallest version (H for a checkout code)."""
    svg = io.BytesIO()
    segno.make_qr(code, error="m").save(
        svg,
        kind="svg",
        xmldecl=False,
        nl=False,
        scale=8,
        border=4,
        dark="#000",
        light="#fff",
        title=f"QR code of the checkout code {code[:4]} {code[4:]}",
        svgclass=None,
        lineclass=None,
    )
    return svg.getvalue().decode()


# A code lives on the shard of its hash (found by it at the till); the customer's list of their
# codes (customer_checkout_codes, kept by triggers, revision 0017) lives on the customer's. The
# customer names a code by its id: its hash comes from the list, then the code by hash.
CODE_HASH = "SELECT code_hash FROM customer_checkout_codes WHERE customer_id = $1 AND code_id = $2"
END = """
DELETE FROM checkout_codes
WHERE code_hash = $3 AND customer_id = $1 AND code_id = $2 AND expires_at > now()
"""


async def end(conn: asyncpg.Connection, customer_id: uuid.UUID, code_id: uuid.UUID) -> None:
    """End one of the customer's codes in force: no till can use it from now on."""
    code_hash = await conn.fetchval(CODE_HASH, customer_id, code_id)
    if code_hash is None or await conn.execute(END, customer_id, code_id, code_hash) == "DELETE 0":
        raise NotFound("There is no checkout code in force with this id.")


# Every code of the customer, by hash. A grant ends under the customer lock; a code the customer
# makes at that very moment lands before the list is read (and is ended) or after (as it could
# land after the one statement that did this before).
CODE_HASHES = "SELECT code_hash FROM customer_checkout_codes WHERE customer_id = $1"
END_ALL = "DELETE FROM checkout_codes WHERE code_hash = ANY($2::bytea[]) AND customer_id = $1"


async def _code_hashes(conn: asyncpg.Connection, customer_id: uuid.UUID) -> list[bytes]:
    return [row["code_hash"] for row in await conn.fetch(CODE_HASHES, customer_id)]


async def end_all(conn: asyncpg.Connection, customer_id: uuid.UUID) -> None:
    """End every checkout code of the customer (they no longer share with tills)."""
    if hashes := await _code_hashes(conn, customer_id):
        await conn.execute(END_ALL, customer_id, hashes)


STOP_KEEPING = """
UPDATE checkout_codes SET keep_purchases = false
WHERE code_hash = ANY($2::bytea[]) AND customer_id = $1 AND keep_purchases
"""


async def stop_keeping_purchases(conn: asyncpg.Connection, customer_id: uuid.UUID) -> None:
    """No till may add purchases through any of the customer's codes from now on."""
    if hashes := await _code_hashes(conn, customer_id):
        await conn.execute(STOP_KEEPING, customer_id, hashes)
