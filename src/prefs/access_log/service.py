"""Reading the access log: newest first, in words a person understands."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from prefs import cursors
from prefs.access_log.schemas import AccessLogPage, DisclosedPreference, Disclosure, Viewer
from prefs.credentials.service import Credential
from prefs.crypto import DecryptionError, Vault
from prefs.customers.service import data_key
from prefs.db import Row
from prefs.preferences.sealed import decrypt_product

FIELD_WORDS = {
    "product": "which products",
    "attributes": "your sizes and details",
    "note": "your notes",
}
PURPOSE_WORDS = {
    "checkout": "at checkout",
    "reorder": "to fulfil a reorder",
    "partner-read": "to prepare an order for you",
}
VIA_WORDS = {
    "card": "using your loyalty card",
    "code": "using a checkout code you showed",
    "reference": "as a partner you chose",
    "reorder": "from a reorder you placed",
}


def encode_cursor(vault: Vault, customer_id: uuid.UUID, at: datetime, ident: uuid.UUID) -> str:
    return cursors.seal_time(vault.page_cursors, "access-log", customer_id, at, ident)


def decode_cursor(vault: Vault, customer_id: uuid.UUID, cursor: str) -> tuple[datetime, uuid.UUID]:
    return cursors.open_time(vault.page_cursors, "access-log", customer_id, cursor)


def _list_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def summary(row: Row, names: list[str | None]) -> str:
    """E.g. "Store 0421, Till 3, saw your sizes and details for Classic Chino at checkout"."""
    who = row["actor_name"]
    if row["store"]:
        who = f"Store {row['store']}, {who}"
    seen = (
        _list_words([FIELD_WORDS.get(f, f) for f in row["fields"]]) if row["fields"] else "nothing"
    )
    known = [n for n in names if n]
    if not names:
        what = "no preferences"
    elif known and len(known) == len(names):
        what = _list_words(known[:3] + ([f"{len(known) - 3} more"] if len(known) > 3 else []))
    else:
        what = f"{len(names)} preference{'s' if len(names) != 1 else ''}"
    purpose = PURPOSE_WORDS.get(row["purpose"], row["purpose"])
    via = VIA_WORDS.get(row["via"], "")
    return f"{who} saw {seen} for {what} {purpose}, {via}.".replace(" ,", ",").replace(", .", ".")


PAGE = """
SELECT disclosure_id, at, actor_kind, credential_id, actor_name, store, partner_id, purpose, via,
       preference_ids, fields
FROM access_log
WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (at, disclosure_id) < ($2, $3))
ORDER BY at DESC, disclosure_id DESC
LIMIT $4
"""
NAMES = """
SELECT preference_id, product_ct FROM preferences
WHERE customer_id = $1 AND preference_id = ANY($2::uuid[])
"""


async def page(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, limit: int, after: str | None
) -> AccessLogPage:
    """One page of disclosures, newest first; ``after`` is the previous page's ``next``."""
    at, ident = decode_cursor(vault, customer_id, after) if after else (None, None)
    rows = await conn.fetch(PAGE, customer_id, at, ident, limit + 1)
    more, rows = len(rows) > limit, rows[:limit]
    items = await disclosures(conn, vault, customer_id, rows)
    next_cursor = (
        encode_cursor(vault, customer_id, rows[-1]["at"], rows[-1]["disclosure_id"])
        if more
        else None
    )
    return AccessLogPage(items=items, next=next_cursor)


async def disclosures(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, rows: Sequence[Row]
) -> list[Disclosure]:
    """Access-log rows in words a person understands, with the names of the preferences shown
    (the access-log page and the export both show them so)."""
    wanted = list({pid for row in rows for pid in row["preference_ids"]})
    names: dict[uuid.UUID, str] = {}
    if wanted:
        key = await data_key(conn, vault, customer_id)
        for pref in await conn.fetch(NAMES, customer_id, wanted):
            try:
                names[pref["preference_id"]] = decrypt_product(
                    key, pref["preference_id"], pref["product_ct"]
                ).name
            except DecryptionError:
                continue
    return [
        Disclosure(
            id=row["disclosure_id"],
            at=row["at"],
            who=Viewer(
                kind=row["actor_kind"],
                id=row["credential_id"],
                name=row["actor_name"],
                store=row["store"],
                partner_id=row["partner_id"],
            ),
            purpose=row["purpose"],
            via=row["via"],
            fields=list(row["fields"]),
            preferences=[
                DisclosedPreference(id=pid, name=names.get(pid)) for pid in row["preference_ids"]
            ],
            summary=summary(row, [names.get(pid) for pid in row["preference_ids"]]),
        )
        for row in rows
    ]


RECORD = """
INSERT INTO access_log (customer_id, actor_kind, credential_id, actor_name, store, partner_id,
                        purpose, via, preference_ids, fields)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""


async def record(
    conn: asyncpg.Connection,
    who: Credential,
    purpose: str,
    via: str,
    disclosures: list[tuple[uuid.UUID, list[uuid.UUID], list[str]]],
) -> None:
    """Log disclosures to a credential's holder: (customer, preferences, fields) each.

    Call inside the transaction that reads what is disclosed, so no answer leaves without its
    record.
    """
    if disclosures:
        await conn.executemany(
            RECORD,
            [
                (
                    customer_id,
                    who.kind,
                    who.id,
                    who.name,
                    who.store,
                    who.partner_id,
                    purpose,
                    via,
                    preference_ids,
                    fields,
                )
                for customer_id, preference_ids, fields in disclosures
            ],
        )
