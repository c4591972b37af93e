"""The till lookup — the hot path. One statement checks the key, finds the customer, checks
consent and reads the granted fields; a second one records the disclosures, sealed under each
customer's data key, and commits them before anyone is answered. Lookups that arrive while a
batch is in the database share the next two statements and the one commit (group commit,
prefs.group_commit). Misses are counted, and refused, by prefs.throttle."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from prefs.credentials import live_key
from prefs.crypto import DecryptionError, Vault, api_key_hash
from prefs.disclosures import INSERT_SEALED, Visit, seal
from prefs.errors import NotFound, Unauthenticated
from prefs.grants import IN_FORCE
from prefs.group_commit import GroupCommit, Queued
from prefs.pos.schemas import LookupResult, TillPreference
from prefs.product_status import VERSION as CATALOGUE_VERSION
from prefs.product_status import StatusCache
from prefs.products import SharedPreference
from prefs.sealed_preferences import shared, shown
from prefs.throttle import MISS_WINDOW, NOT_FOUND, ThrottledTills, count_misses, throttled

# Lookup i of a batch sends its key hash ($1, $2) and the hashes of its card or code under
# every index key version, primary first ($3, $4 or $5, $6; should versions disagree, the
# primary's match wins); $7 and $8 are the misses per minute allowed per key and per store. Each
# lookup whose key is live gets one row: refused (refused_by its store, else its key, with
# retry_after) when its key or store has used up its misses, counting the misses of earlier
# lookups in the batch that were not refused; otherwise its shown preferences as arrays in rank
# order (NULLs when nothing is shown). A refused row carries nothing of what was found. A lookup
# without a row had no live key. Every hit (a row with a disclosure_id) is logged, sealed under
# its customer's data key, by the batch's second statement (INSERT_SEALED) before any lookup of the
# batch is answered: no answer leaves without its committed record. Misses are counted
# afterwards, by count_misses.
LOOKUP = f"""
WITH cred AS MATERIALIZED (
    SELECT r.i, r.key_hash, c.credential_id, c.display_name, c.store,
           coalesce(mk.misses, 0) AS key_misses, mk.window_start AS key_window,
           coalesce(ms.misses, 0) AS store_misses, ms.window_start AS store_window
    FROM unnest($1::int[], $2::bytea[]) AS r(i, key_hash)
    JOIN credentials c ON {live_key("c", "r.key_hash", "'pos'")}
    LEFT JOIN key_misses mk ON mk.key_hash = r.key_hash
        AND mk.window_start > now() - {MISS_WINDOW}
    LEFT JOIN store_misses ms ON ms.store = c.store
        AND ms.window_start > now() - {MISS_WINDOW}
), bound AS (  -- a checkout code is bound to the first store whose till uses it
    UPDATE checkout_codes k SET store = cred.store
    FROM unnest($5::int[], $6::bytea[]) AS h(i, code_hash) JOIN cred ON cred.i = h.i
    WHERE k.code_hash = h.code_hash AND k.store IS NULL AND k.expires_at > now()
      AND cred.key_misses < $7::int AND cred.store_misses < $8::int
    RETURNING k.code_hash, k.store
), found AS MATERIALIZED (
    SELECT DISTINCT ON (f.i) f.* FROM (  -- card_index: proven cards only (prefs.cards)
        SELECT h.i, h.n, ci.customer_id, g.fields, g.preference_ids, 'card' AS via
        FROM unnest($3::int[], $4::bytea[]) WITH ORDINALITY AS h(i, card_hash, n)
        JOIN card_index ci ON ci.card_hash = h.card_hash
        JOIN consents g ON g.customer_id = ci.customer_id AND g.audience = 'pos'
        WHERE {IN_FORCE}
        UNION ALL
        SELECT h.i, h.n, k.customer_id, k.fields, k.preference_ids, 'code'
        FROM unnest($5::int[], $6::bytea[]) WITH ORDINALITY AS h(i, code_hash, n)
        JOIN cred ON cred.i = h.i
        CROSS JOIN LATERAL (  -- one index probe per code, never a scan of all live codes
            SELECT * FROM checkout_codes k
            WHERE k.code_hash = h.code_hash AND k.expires_at > now() OFFSET 0
        ) k
        WHERE coalesce(k.store, (SELECT b.store FROM bound b WHERE b.code_hash = k.code_hash))
              = cred.store
    ) f
    ORDER BY f.i, f.n
), judged AS MATERIALIZED (
    SELECT j.*, CASE WHEN NOT (j.missed OR j.key_throttled OR j.store_throttled)
                     THEN gen_random_uuid() END AS disclosure_id
    FROM (
        SELECT k.*, k.store_misses + count(*) FILTER (WHERE k.missed AND NOT k.key_throttled)
                    OVER (PARTITION BY k.store ORDER BY k.i
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= $8::int
                    AS store_throttled
        FROM (
            SELECT cred.*, f.customer_id, f.fields, f.preference_ids, f.via,
                   f.i IS NULL AS missed,
                   cred.key_misses + count(*) FILTER (WHERE f.i IS NULL)
                       OVER (PARTITION BY cred.key_hash ORDER BY cred.i
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= $7::int
                       AS key_throttled
            FROM cred LEFT JOIN found f ON f.i = cred.i
        ) k
    ) j
), hit AS NOT MATERIALIZED (
    SELECT * FROM judged WHERE disclosure_id IS NOT NULL
), shown AS MATERIALIZED (
    SELECT s.i, array_agg(s.preference_id ORDER BY s.rank) AS ids,
           array_agg(s.rank ORDER BY s.rank) AS ranks,
           array_agg(s.status ORDER BY s.rank) AS statuses,
           array_agg(s.product_ct ORDER BY s.rank) AS products,
           array_agg(s.attributes_ct ORDER BY s.rank) AS attributes,
           array_agg(s.note_ct ORDER BY s.rank) AS notes,
           array_agg(s.sealed ORDER BY s.rank) AS sealed
    FROM ({shown("i")}) s
    GROUP BY s.i
)
SELECT j.i, j.store, j.credential_id, j.display_name,
       j.missed AND NOT (j.key_throttled OR j.store_throttled) AS counted_miss,
       CASE WHEN j.store_throttled THEN 'store' WHEN j.key_throttled THEN 'key' END AS refused_by,
       greatest(1, ceil(extract(epoch FROM CASE
           WHEN j.store_throttled THEN coalesce(j.store_window, now())
           WHEN j.key_throttled THEN coalesce(j.key_window, now())
       END + {MISS_WINDOW} - now())))::int AS retry_after,
       CASE WHEN j.disclosure_id IS NOT NULL THEN j.customer_id END AS customer_id,
       CASE WHEN j.disclosure_id IS NOT NULL THEN j.fields END AS fields,
       CASE WHEN j.disclosure_id IS NOT NULL THEN j.via END AS via,
       k.generation, k.wrapped, j.disclosure_id, shown.ids, shown.ranks,
       shown.statuses, shown.products, shown.attributes, shown.notes, shown.sealed,
       {CATALOGUE_VERSION} AS catalogue_version
FROM judged j
LEFT JOIN customer_keys k ON k.customer_id = j.customer_id AND j.disclosure_id IS NOT NULL
LEFT JOIN shown ON shown.i = j.i
"""


def _log_visits(
    vault: Vault, rows: Sequence[asyncpg.Record]
) -> tuple[list[Any], dict[int, Exception]]:
    """The sealed access-log records of a batch's hits (INSERT_SEALED's arguments), and the error of
    each hit whose data key cannot be unwrapped (that lookup fails alone, unlogged)."""
    ids: list[uuid.UUID] = []
    customers: list[uuid.UUID] = []
    sealed: list[bytes] = []
    broken: dict[int, Exception] = {}
    for row in rows:
        disclosure_id = row["disclosure_id"]
        if disclosure_id is None:
            continue
        try:
            key = vault.envelope.unwrap(row["customer_id"], row["generation"], row["wrapped"])
        except DecryptionError as error:
            broken[row["i"]] = error
            continue
        visit = Visit(
            actor_kind="pos",
            credential_id=row["credential_id"],
            actor_name=row["display_name"],
            store=row["store"],
            partner_id=None,
            purpose="checkout",
            via=row["via"],
            preference_ids=list(row["ids"] or ()),
            fields=list(row["fields"]),
        )
        ids.append(disclosure_id)
        customers.append(row["customer_id"])
        sealed.append(seal(key, disclosure_id, visit))
    return [ids, customers, sealed], broken


Hashes = Sequence[bytes]
Request = tuple[bytes, Hashes, Hashes]  # the key's hash, the card's hashes, the code's hashes


def _arguments(batch: Sequence[Request]) -> tuple[list[Any], ...]:
    keys: list[bytes] = []
    card_i: list[int] = []
    cards: list[bytes] = []
    code_i: list[int] = []
    codes: list[bytes] = []
    for i, (key_hash, card_hashes, code_hashes) in enumerate(batch):
        keys.append(key_hash)
        card_i += [i] * len(card_hashes)
        cards += card_hashes
        code_i += [i] * len(code_hashes)
        codes += code_hashes
    return list(range(len(batch))), keys, card_i, cards, code_i, codes


# The lookup's plan depends on no parameter's value (the arrays are keys, looked up by index),
# and planning it takes longer than running it: its connections keep one generic plan. That plan
# lasts as long as the connection, so it must not depend on how small a table was when it was
# made: every table is reached through an index. Disabling sequential scans inflates the plan's
# cost past jit_above_cost, and a server built with LLVM (Debian's PostgreSQL is) then compiles
# every lookup: about 1 s each. JIT is off on these connections.
LOOKUP_SERVER_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "jit": "off",
}
# The same, for one transaction: behind a pooler in transaction mode a connection's session is
# not ours between transactions (and PgBouncer refuses these as start-up parameters). There the
# lookup and its log go in one transaction that begins with these, and each batch's statement is
# planned again (its plan is not kept between transactions either).
LOOKUP_LOCAL_SETTINGS = "; ".join(
    f"SET LOCAL {name} = {value}" for name, value in LOOKUP_SERVER_SETTINGS.items()
)


class LookupBatcher(GroupCommit[Request, "asyncpg.Record | None"]):
    """Till lookups in group commit (prefs.group_commit), per worker process: each batch is one
    lookup statement, one insert of its hits' sealed access-log records (when any was found) and
    one WAL flush; its misses are counted (prefs.throttle) before they are answered.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        max_batch: int = 64,
        in_flight: int = 1,
        misses_per_key: int = 30,
        misses_per_store: int = 120,
        *,
        vault: Vault,
        settings_per_transaction: bool = False,
    ) -> None:
        super().__init__(pool, max_batch, in_flight)
        # True behind a transaction pooler: LOOKUP_LOCAL_SETTINGS in each batch's transaction
        self.settings_per_transaction = settings_per_transaction
        self.vault = vault  # seals each hit's access-log record under its customer's data key
        self.limits = (misses_per_key, misses_per_store)  # per minute, across all workers
        self.statements = 0  # lookup statements sent, for tests and the curious
        self.catalogue = StatusCache()  # the catalogue's statuses, as of the version last seen

    async def fetch(self, key_hash: bytes, cards: Hashes, codes: Hashes) -> asyncpg.Record | None:
        """The row of one lookup (None: no live key), from whichever batch carried it."""
        return await self.submit((key_hash, cards, codes))

    async def _fetch(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> tuple[list[asyncpg.Record], dict[int, Exception]]:
        """The batch's rows, once the records of its hits are committed; and the lookups that
        cannot be answered because their data key cannot be unwrapped."""
        if self.settings_per_transaction:
            async with conn.transaction():
                await conn.execute(LOOKUP_LOCAL_SETTINGS)
                return await self._lookup_and_log(conn, requests)
        return await self._lookup_and_log(conn, requests)

    async def _lookup_and_log(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> tuple[list[asyncpg.Record], dict[int, Exception]]:
        self.statements += 1
        rows: list[asyncpg.Record] = await conn.fetch(LOOKUP, *_arguments(requests), *self.limits)
        visits, broken = _log_visits(self.vault, rows)
        if visits[0]:
            await conn.execute(INSERT_SEALED, *visits)
        return rows, broken

    async def commit(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: Sequence[Queued[Request, asyncpg.Record | None]],
    ) -> None:
        """Answer each lookup with its row; misses only once they are counted."""
        rows, broken = await self._fetch(conn, [queued.request for queued in batch])
        per_lookup: list[asyncpg.Record | None] = [None] * len(batch)
        for found in rows:
            per_lookup[found["i"]] = found
        misses = []
        for i, (queued, row) in enumerate(zip(batch, per_lookup, strict=True)):
            if i in broken:
                queued.fail(broken[i])  # its own: raised once
            elif row is not None and row["counted_miss"]:
                misses.append((queued, row))
            else:
                queued.settle(row)
        if misses:
            verdicts = await count_misses(
                conn, [(queued.request[0], row["store"]) for queued, row in misses], *self.limits
            )
            for (queued, row), refused in zip(misses, verdicts, strict=True):
                if refused is None:
                    queued.settle(row)
                else:
                    queued.fail(throttled(refused))


def _for_till(rank: int, preference: SharedPreference) -> TillPreference:
    """Numbered 1..n among what is shown (the customer's own ranks would show gaps where an
    unshared preference sits), without the preference's id."""
    return TillPreference(
        rank=rank,
        status=preference.status,
        product=preference.product,
        attributes=preference.attributes,
        note=preference.note,
    )


async def lookup(
    batcher: LookupBatcher,
    vault: Vault,
    refused: ThrottledTills,
    api_key: str,
    card: str | None,
    code: str | None,
) -> LookupResult:
    """Disclose the granted fields of a customer's ranked preferences to a till, and log it."""
    key_hash = api_key_hash(api_key)
    refused.check(key_hash)
    card_hashes: Hashes = vault.index.all_digests("card", card.encode()) if card else ()
    code_hashes: Hashes = vault.index.all_digests("checkout-code", code.encode()) if code else ()
    row = await batcher.fetch(key_hash, card_hashes, code_hashes)
    if row is None:
        raise Unauthenticated("The API key is not valid.")
    if row["refused_by"] is not None:
        refused.remember(key_hash, row)
        raise throttled(row["retry_after"])
    if row["customer_id"] is None:
        raise NotFound(NOT_FOUND)
    customer_id: uuid.UUID = row["customer_id"]
    data_key = vault.envelope.unwrap(customer_id, row["generation"], row["wrapped"])
    fields = row["fields"]
    catalogue = await batcher.catalogue.current(batcher.pool, row["catalogue_version"])
    return LookupResult(
        via=row["via"],
        fields=list(fields),
        preferences=[
            _for_till(rank, shared(data_key, fields, catalogue, *preference))
            for rank, preference in enumerate(
                zip(
                    row["ids"] or (),
                    row["ranks"] or (),
                    row["statuses"] or (),
                    row["products"] or (),
                    row["attributes"] or (),
                    row["notes"] or (),
                    row["sealed"] or (),
                    strict=True,
                ),
                start=1,
            )
        ],
        disclosure_id=row["disclosure_id"],
    )
