"""Reading the access log: newest first, in words a person understands."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from prefs import cursors
from prefs.access_log.schemas import AccessLogPage, DisclosedPreference, Disclosure, Viewer
from prefs.crypto import DataKey, DecryptionError, Vault
from prefs.customer_keys import data_key
from prefs.db import Row
from prefs.disclosures import Visit, as_row, open_visit, seal
from prefs.sealed_preferences import product_of

# what was seen besides the products, which the summary names
FIELD_WORDS = {
    "attributes": "your sizes and details",
    "note": "your notes",
}
PURPOSE_WORDS = {
    "checkout": "at checkout",
    "purchase": "from what you bought",
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


def _at_most_three(items: list[str]) -> str:
    return _list_words(items[:3] + ([f"{len(items) - 3} more"] if len(items) > 3 else []))


def _place(row: Row, stores: Mapping[str, str]) -> str:
    """The till and its store as the customer knows it: "Till 3 at Oxford Street" (the store's
    directory name; its id where the directory has no name for it)."""
    who: str = row["actor_name"]
    if not row["store"]:
        return who
    return f"{who} at {stores.get(row['store']) or 'store ' + row['store']}"


def summary(row: Row, names: list[str | None], stores: Mapping[str, str] | None = None) -> str:
    """E.g. "Till 3 at Oxford Street saw Classic Chino with your sizes and details at checkout,
    using your loyalty card", or for a purchase write "Till 3 at Oxford Street added Classic
    Chino, waist 34 leg 34, to your locker, using your loyalty card"."""
    who = _place(row, stores or {})
    if row["purpose"] == "purchase":
        return _purchase_summary(row, who)
    known = [n for n in names if n]
    if not names:
        what = "no preferences"
    elif known and len(known) == len(names):
        what = _at_most_three(known)
    else:
        what = f"{len(names)} preference{'s' if len(names) != 1 else ''}"
    fields = list(row["fields"] or [])
    more = [FIELD_WORDS[f] for f in ("attributes", "note") if f in fields]
    if "product" in fields:
        seen = f"{what} with {_list_words(more)}" if more else what
    elif more:
        seen = f"{_list_words(more)} for {what}"
    else:
        seen = f"nothing of {what}"
    purpose = PURPOSE_WORDS.get(row["purpose"], row["purpose"])
    via = VIA_WORDS.get(row["via"], "")
    return f"{who} saw {seen} {purpose}, {via}.".replace(" ,", ",").replace(", .", ".")


def _purchase_summary(row: Row, who: str) -> str:
    done = []
    if row.get("added"):
        added = _at_most_three(row["added"])
        # "added Classic Chino, waist 34 leg 34, to your locker": the sizes set off by commas
        closing = "," if len(row["added"]) <= 3 and ", " in row["added"][-1] else ""
        done.append(f"added {added}{closing} to your locker")
    if row.get("counted"):
        done.append(f"counted another purchase of {_at_most_three(row['counted'])}")
    what = " and ".join(done) or "added nothing to your locker"
    via = VIA_WORDS.get(row["via"], "")
    return f"{who} {what}, {via}.".replace(", .", ".")


# what an entry written before sealing held in clear (purchase writes came later, sealed only)
CLEAR_FIELDS = [field for field in Visit.__struct_fields__ if field not in ("added", "counted")]
# Entries are sealed (``sealed``); the columns in clear are read for entries written before
# sealing until the backfill (seal_backlog) has sealed them.
PAGE = """
SELECT disclosure_id, at, sealed, actor_kind, credential_id, actor_name, store, partner_id,
       purpose, via, preference_ids, fields
FROM access_log
WHERE customer_id = $1 AND ($2::timestamptz IS NULL OR (at, disclosure_id) < ($2, $3))
ORDER BY at DESC, disclosure_id DESC
LIMIT $4
"""
STORE_NAMES = "SELECT store_id, name FROM stores WHERE store_id = ANY($1::text[])"
NAMES = """
SELECT preference_id, sealed, product_ct FROM preferences
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


def opened(key: DataKey, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Access-log rows with their visits unsealed (rows still in clear as they are); an entry
    that does not open under this customer's key is left out."""
    entries: list[dict[str, Any]] = []
    for row in rows:
        if row["sealed"] is None:
            entries.append(dict(row))
            continue
        try:
            visit = open_visit(key, row["disclosure_id"], row["sealed"])
        except (DecryptionError, msgspec.DecodeError):
            continue
        entries.append({"disclosure_id": row["disclosure_id"], "at": row["at"], **as_row(visit)})
    return entries


async def disclosures(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, rows: Sequence[Row]
) -> list[Disclosure]:
    """Access-log rows in words a person understands, with the names of the preferences shown
    (the access-log page and the export both show them so)."""
    if not rows:
        return []
    key = await data_key(conn, vault, customer_id)
    entries = opened(key, rows)
    wanted = list({pid for entry in entries for pid in entry["preference_ids"]})
    names: dict[uuid.UUID, str] = {}
    if wanted:
        for pref in await conn.fetch(NAMES, customer_id, wanted):
            try:
                names[pref["preference_id"]] = product_of(key, pref).name
            except DecryptionError:
                continue
    wanted_stores = sorted({entry["store"] for entry in entries if entry["store"]})
    stores: dict[str, str] = (
        {row["store_id"]: row["name"] for row in await conn.fetch(STORE_NAMES, wanted_stores)}
        if wanted_stores
        else {}
    )
    return [
        Disclosure(
            id=row["disclosure_id"],
            at=row["at"],
            who=Viewer(
                kind=row["actor_kind"],
                id=row["credential_id"],
                name=row["actor_name"],
                store=row["store"],
                store_name=stores.get(row["store"]) if row["store"] else None,
                partner_id=row["partner_id"],
            ),
            purpose=row["purpose"],
            via=row["via"],
            fields=list(row["fields"]),
            preferences=[
                DisclosedPreference(id=pid, name=names.get(pid)) for pid in row["preference_ids"]
            ],
            summary=summary(row, [names.get(pid) for pid in row["preference_ids"]], stores),
        )
        for row in entries
    ]


# The backfill: entries written in clear before sealing, a batch at a time in primary-key order
# from where the previous batch ended (no index needed on what is left; rows another run holds
# are skipped, so two runs at once do not collide); the columns in clear are emptied.
BACKLOG = """
SELECT a.customer_id, a.disclosure_id, a.at, a.actor_kind, a.credential_id, a.actor_name,
       a.store, a.partner_id, a.purpose, a.via, a.preference_ids, a.fields,
       k.generation, k.wrapped
FROM access_log a LEFT JOIN customer_keys k USING (customer_id)
WHERE (a.customer_id, a.at, a.disclosure_id) > ($2, $3, $4) AND a.sealed IS NULL
ORDER BY a.customer_id, a.at, a.disclosure_id
LIMIT $1
FOR UPDATE OF a SKIP LOCKED
"""
BACKLOG_START = (uuid.UUID(int=0), datetime.min.replace(tzinfo=UTC), uuid.UUID(int=0))
SEAL_ROWS = """
UPDATE access_log a SET sealed = u.sealed, actor_kind = NULL, credential_id = NULL,
    actor_name = NULL, store = NULL, partner_id = NULL, purpose = NULL, via = NULL,
    preference_ids = NULL, fields = NULL
FROM unnest($1::uuid[], $2::timestamptz[], $3::uuid[], $4::bytea[])
    AS u(customer_id, at, disclosure_id, sealed)
WHERE (a.customer_id, a.at, a.disclosure_id) = (u.customer_id, u.at, u.disclosure_id)
"""
# an entry whose customer has no data key belongs to an erased customer: nothing may keep it
DROP_ORPHANS = """
DELETE FROM access_log a
USING unnest($1::uuid[], $2::timestamptz[], $3::uuid[]) AS u(customer_id, at, disclosure_id)
WHERE (a.customer_id, a.at, a.disclosure_id) = (u.customer_id, u.at, u.disclosure_id)
"""


async def seal_backlog(
    conn: asyncpg.Connection, vault: Vault, batch: int = 1000
) -> AsyncIterator[int]:
    """Seal the access-log entries still in clear, one transaction per batch; yields how many
    each batch handled. Online, and safe to stop and run again."""
    after = BACKLOG_START
    while True:
        async with conn.transaction():
            rows = await conn.fetch(BACKLOG, batch, *after)
            if not rows:
                return
            sealed: list[list[Any]] = [[], [], [], []]
            orphans: list[list[Any]] = [[], [], []]
            for row in rows:
                where = [row["customer_id"], row["at"], row["disclosure_id"]]
                if row["wrapped"] is None:
                    for column, value in zip(orphans, where, strict=True):
                        column.append(value)
                    continue
                key = vault.envelope.unwrap(row["customer_id"], row["generation"], row["wrapped"])
                visit = Visit(**{field: row[field] for field in CLEAR_FIELDS})
                for column, value in zip(
                    sealed, [*where, seal(key, row["disclosure_id"], visit)], strict=True
                ):
                    column.append(value)
            if sealed[0]:
                await conn.execute(SEAL_ROWS, *sealed)
            if orphans[0]:
                await conn.execute(DROP_ORPHANS, *orphans)
        last = rows[-1]
        after = (last["customer_id"], last["at"], last["disclosure_id"])
        yield len(rows)
