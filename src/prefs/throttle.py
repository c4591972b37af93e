"""The till's miss throttle, stated once: how many lookups (and card confirmations, and purchase
writes) that find nothing a till key and a store may make per window, how the misses are
counted, how long a refusal lasts, and what the till is told.

The misses are counted in the database, under row locks, so the limits hold across every worker
and every instance (count_misses). The till lookup judges its batch's misses inside its lookup
statement (prefs.pos.service's LOOKUP or LOOKUP_ROUTED, with MISS_WINDOW from here) and then has
them counted here;
other till writes ask `refusal` first and answer a miss with `missed`, which counts it. Each process remembers
refusals until their window ends (ThrottledTills), so a throttled till costs no round trip.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import asyncpg

from prefs.errors import NotFound, TooManyRequests

# the one answer to a till for "nothing found": unknown card or code, no grant, a guess
NOT_FOUND = "No customer preferences can be shown for this card or code."
# how long a till key's or a store's window of misses lasts (SQL)
MISS_WINDOW = "interval '1 minute'"

# The seconds until the window that refuses this key or store ends; no row while both have
# misses left.
REFUSED = f"""
SELECT greatest(1, ceil(extract(epoch FROM max(window_start) + {MISS_WINDOW} - now())))::int
FROM (
    SELECT window_start FROM key_misses
    WHERE key_hash = $1 AND window_start > now() - {MISS_WINDOW} AND misses >= $3
    UNION ALL
    SELECT window_start FROM store_misses
    WHERE store = $2 AND window_start > now() - {MISS_WINDOW} AND misses >= $4
) AS full_windows
HAVING count(*) > 0
"""
# Ended windows, for the purge; rows a lookup is counting right now are left for the next purge
# (never waited for, so the purge and a lookup cannot deadlock).
ENDED_KEY_WINDOWS = f"""
DELETE FROM key_misses WHERE key_hash IN (
    SELECT key_hash FROM key_misses WHERE window_start <= now() - {MISS_WINDOW}
    FOR UPDATE SKIP LOCKED
)"""
ENDED_STORE_WINDOWS = f"""
DELETE FROM store_misses WHERE store IN (
    SELECT store FROM store_misses WHERE window_start <= now() - {MISS_WINDOW}
    FOR UPDATE SKIP LOCKED
)"""


def throttled(wait: int) -> TooManyRequests:
    """What a refused till is told: 429, and when trying again makes sense."""
    return TooManyRequests(
        f"Too many lookups found nothing; try again in {wait} s.",
        retry_after=wait,
    )


async def refusal(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    key_hash: bytes,
    store: str,
    per_key: int,
    per_store: int,
) -> None:
    """Raise the 429 when the key or its store has used up its misses for this window."""
    wait = await conn.fetchval(REFUSED, key_hash, store, per_key, per_store)
    if wait is not None:
        raise throttled(wait)


# Counting a batch's misses decides them: under row locks (keys, then stores, each in order), a
# miss is counted while its key and its store are under their limits and refused (429) after,
# so batches that ran side by side on other workers cannot take a key or a store past its limit
# through misses. A window that has ended starts again.
ENSURE_MISS_ROWS = """
WITH keys AS (
    INSERT INTO key_misses (key_hash, window_start, misses)
    SELECT DISTINCT key_hash, now(), 0 FROM unnest($1::bytea[]) AS m(key_hash)
    ON CONFLICT DO NOTHING
)
INSERT INTO store_misses (store, window_start, misses)
SELECT DISTINCT store, now(), 0 FROM unnest($2::text[]) AS m(store)
ON CONFLICT DO NOTHING
"""
# each row as it stands now: an ended window counts 0 from now; retry_after is when it ends
LOCK_MISS_ROWS = f"""
WITH locked AS (
    SELECT * FROM (
        SELECT 'key' AS scope, key_hash, NULL::text AS store, misses, window_start
        FROM key_misses WHERE key_hash = ANY($1::bytea[]) ORDER BY key_hash FOR UPDATE
    ) AS k
    UNION ALL
    SELECT * FROM (
        SELECT 'store', NULL::bytea, store, misses, window_start
        FROM store_misses WHERE store = ANY($2::text[]) ORDER BY store FOR UPDATE
    ) AS s
), windows AS (
    SELECT scope, key_hash, store,
           CASE WHEN window_start > now() - {MISS_WINDOW} THEN misses ELSE 0 END AS misses,
           CASE WHEN window_start > now() - {MISS_WINDOW} THEN window_start ELSE now() END
               AS window_start
    FROM locked
)
SELECT windows.*, greatest(1, ceil(extract(epoch FROM
           window_start + {MISS_WINDOW} - now())))::int AS retry_after
FROM windows
"""
SET_MISSES = """
WITH keys AS (
    UPDATE key_misses t SET misses = u.misses, window_start = u.window_start
    FROM unnest($1::bytea[], $2::int[], $3::timestamptz[]) AS u(key_hash, misses, window_start)
    WHERE t.key_hash = u.key_hash
)
UPDATE store_misses t SET misses = u.misses, window_start = u.window_start
FROM unnest($4::text[], $5::int[], $6::timestamptz[]) AS u(store, misses, window_start)
WHERE t.store = u.store
"""


async def count_misses(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    misses: Sequence[tuple[bytes, str]],
    per_key: int,
    per_store: int,
) -> list[int | None]:
    """Count the misses (key hash, store) in order: None for each one counted, else the seconds
    until the window that refused it ends."""
    keys = sorted({key for key, _ in misses})
    stores = sorted({store for _, store in misses})
    async with conn.transaction():
        await conn.execute(ENSURE_MISS_ROWS, keys, stores)
        windows = {
            (row["scope"], row["key_hash"] if row["scope"] == "key" else row["store"]): row
            for row in await conn.fetch(LOCK_MISS_ROWS, keys, stores)
        }
        count = {who: window["misses"] for who, window in windows.items()}
        limits = {"key": per_key, "store": per_store}
        verdicts: list[int | None] = []
        for key, store in misses:
            full = [who for who in (("store", store), ("key", key)) if count[who] >= limits[who[0]]]
            if full:
                verdicts.append(windows[full[0]]["retry_after"])
                continue
            for who in (("key", key), ("store", store)):
                count[who] += 1
            verdicts.append(None)
        changed = [who for who in count if count[who] != windows[who]["misses"]]
        arguments: list[list[Any]] = []
        for scope in ("key", "store"):
            mine = [who for who in changed if who[0] == scope]
            arguments += [
                [who[1] for who in mine],
                [count[who] for who in mine],
                [windows[who]["window_start"] for who in mine],
            ]
        await conn.execute(SET_MISSES, *arguments)
    return verdicts


async def missed(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
    key_hash: bytes,
    store: str,
    per_key: int,
    per_store: int,
) -> NoReturn:
    """Count one till write that found nothing, and answer it: the one 404, or the 429 when the
    key or its store has used up its misses."""
    [refused] = await count_misses(conn, [(key_hash, store)], per_key, per_store)
    if refused is not None:
        raise throttled(refused) from None
    raise NotFound(NOT_FOUND) from None


class ThrottledTills:
    """Keys and stores the database has refused for too many misses, remembered (per process)
    until their window ends: a throttled till is refused without a round trip. The misses
    themselves are counted in the database (count_misses), across all workers."""

    def __init__(self) -> None:
        self.until: dict[tuple[str, Any], float] = {}
        self.store_of_key: dict[bytes, str] = {}

    def check(self, key_hash: bytes) -> None:
        now = time.monotonic()
        for scope, who in (("key", key_hash), ("store", self.store_of_key.get(key_hash))):
            until = self.until.get((scope, who))
            if until is not None and until > now:
                raise throttled(math.ceil(until - now))

    def remember(self, key_hash: bytes, row: asyncpg.Record) -> None:
        """Remember the database's refusal of this key or its store until that window ends."""
        now = time.monotonic()
        if len(self.until) > 100_000:
            self.until = {k: v for k, v in self.until.items() if v > now}
            self.store_of_key.clear()
        self.store_of_key[key_hash] = row["store"]
        who = key_hash if row["refused_by"] == "key" else row["store"]
        self.until[row["refused_by"], who] = now + row["retry_after"]
