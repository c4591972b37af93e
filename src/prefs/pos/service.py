"""The till lookup — the hot path. One statement checks the key, finds the customer, checks
consent and reads the granted fields; a second one records the disclosures, sealed under each
customer's data key, and commits them before anyone is answered. Lookups that arrive while a
batch is in the database share the next two statements and the one commit (group commit)."""

from __future__ import annotations

import asyncio
import copy
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from prefs.credentials import live_key
from prefs.crypto import DecryptionError, Vault, api_key_hash
from prefs.disclosures import INSERT_SEALED, Visit, seal
from prefs.errors import NotFound, TooManyRequests, Unauthenticated, Unavailable
from prefs.grants import IN_FORCE
from prefs.pos.schemas import LookupResult, TillPreference
from prefs.products import SharedPreference
from prefs.sealed_preferences import shared, shown

NOT_FOUND = "No customer preferences can be shown for this card or code."
# how long a till key's or a store's window of misses lasts (SQL)
MISS_WINDOW = "interval '1 minute'"

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
           array_agg(s.note_ct ORDER BY s.rank) AS notes
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
       shown.statuses, shown.products, shown.attributes, shown.notes
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


Hashes = Sequence[bytes]
Request = tuple[bytes, Hashes, Hashes]
Queued = tuple[Request, "asyncio.Future[asyncpg.Record | None]"]


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
# made: every table is reached through an index.
LOOKUP_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


# Errors the server reports about one lookup's data (data exceptions, integrity, a trigger's
# RAISE, serialisation or deadlock): worth trying each lookup of a refused batch alone. Any other
# error (timeouts, read-only after a failover, disk full) would fail each of them too.
RETRY_ALONE_CLASSES = ("22", "23", "P0", "40")


class LookupBatcher:
    """Group commit for till lookups, per worker process.

    A lookup that finds fewer than ``in_flight`` batches in the database starts one at once, so
    a quiet till waits for nothing. Under load, lookups that arrive meanwhile queue and go
    together, up to ``max_batch``, in the next batch: one lookup statement, one insert of their
    sealed access-log records (when any was found) and one WAL flush for all of them. If the database refuses a shared batch because of one lookup's data,
    each of its lookups is retried alone, so that one lookup's error is never another's.
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
    ) -> None:
        self.pool = pool
        self.vault = vault  # seals each hit's access-log record under its customer's data key
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.limits = (misses_per_key, misses_per_store)  # per minute, across all workers
        self.running = 0
        self.statements = 0  # statements sent, for tests and the curious
        self.queue: list[Queued] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def fetch(self, key_hash: bytes, cards: Hashes, codes: Hashes) -> asyncpg.Record | None:
        """The row of one lookup (None: no live key), from whichever batch carried it."""
        future: asyncio.Future[asyncpg.Record | None] = asyncio.get_running_loop().create_future()
        self.queue.append(((key_hash, cards, codes), future))
        if self.running < self.in_flight:
            self._start()
        return await future

    def _start(self) -> None:
        self.running += 1
        task = asyncio.create_task(self._drain())
        self.tasks.add(task)
        task.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[None]) -> None:
        # counted here, not in a finally: a task cancelled before it ran never runs one
        self.tasks.discard(task)
        self.running -= 1
        if task.cancelled():
            if not self.tasks:  # the loop is going away: nobody else will answer them
                _fail(self.queue, Unavailable("The service is stopping; retry shortly."))
                self.queue = []
        elif self.queue and self.running < self.in_flight:
            self._start()  # queued after this task's last look at the queue

    async def close(self) -> None:
        """Let the batches in flight finish (before their pool closes)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            batch = [queued for queued in batch if not queued[1].done()]  # gone: not asked
            if batch:
                await self._run(batch)

    async def _fetch(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> tuple[list[asyncpg.Record], dict[int, Exception]]:
        """The batch's rows, once the records of its hits are committed; and the lookups that
        cannot be answered because their data key cannot be unwrapped."""
        self.statements += 1
        rows: list[asyncpg.Record] = await conn.fetch(LOOKUP, *_arguments(requests), *self.limits)
        visits, broken = _log_visits(self.vault, rows)
        if visits[0]:
            await conn.execute(INSERT_SEALED, *visits)
        return rows, broken

    async def _run(self, batch: list[Queued]) -> None:
        try:
            async with self.pool.acquire() as conn:
                try:
                    rows, broken = await self._fetch(conn, [request for request, _ in batch])
                except asyncpg.PostgresError as error:
                    if len(batch) == 1 or not str(error.sqlstate).startswith(RETRY_ALONE_CLASSES):
                        raise
                    # rolled back because of some lookup's data: each alone, so that one
                    # lookup's error fails that lookup only
                    for request, future in batch:
                        if future.done():
                            continue  # its request went away: not asked
                        try:
                            alone, unlogged = await self._fetch(conn, [request])
                            await self._answer(conn, [(request, future)], alone, unlogged)
                        except asyncpg.PostgresError as its_own:
                            _fail([(request, future)], its_own)
                    return
                await self._answer(conn, batch, rows, broken)
        except Exception as error:  # every lookup of the batch still waiting gets it
            _fail(batch, error)
        except BaseException:
            _fail(batch, Unavailable("The service is stopping; retry shortly."))
            raise

    async def _answer(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: Sequence[Queued],
        rows: list[asyncpg.Record],
        broken: dict[int, Exception],
    ) -> None:
        """Answer each lookup with its row; misses only once they are counted."""
        per_lookup: list[asyncpg.Record | None] = [None] * len(batch)
        for found in rows:
            per_lookup[found["i"]] = found
        misses = []
        for i, ((request, future), row) in enumerate(zip(batch, per_lookup, strict=True)):
            if i in broken:
                if not future.done():
                    future.set_exception(broken[i])  # its own: raised once
            elif row is not None and row["counted_miss"]:
                misses.append((request, future, row))
            else:
                _settle(future, row)
        if misses:
            verdicts = await count_misses(
                conn, [(request[0], row["store"]) for request, _, row in misses], *self.limits
            )
            for (_, future, row), refused in zip(misses, verdicts, strict=True):
                if refused is None:
                    _settle(future, row)
                elif not future.done():
                    future.set_exception(_throttled(refused))


def _settle(future: asyncio.Future[asyncpg.Record | None], result: asyncpg.Record | None) -> None:
    if not future.done():  # else its request went away while the statement ran: the record stays
        future.set_result(result)


def _fail(batch: list[Queued], error: BaseException) -> None:
    """Hand ``error`` to each lookup still waiting, each its own copy (a traceback grows on the
    exception object each time it is raised)."""
    for _, future in batch:
        if not future.done():
            future.set_exception(copy.copy(error))


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
                raise _throttled(math.ceil(until - now))

    def remember(self, key_hash: bytes, row: asyncpg.Record) -> None:
        """Remember the database's refusal of this key or its store until that window ends."""
        now = time.monotonic()
        if len(self.until) > 100_000:
            self.until = {k: v for k, v in self.until.items() if v > now}
            self.store_of_key.clear()
        self.store_of_key[key_hash] = row["store"]
        who = key_hash if row["refused_by"] == "key" else row["store"]
        self.until[row["refused_by"], who] = now + row["retry_after"]


def _throttled(wait: int) -> TooManyRequests:
    return TooManyRequests(
        f"Too many lookups found nothing; try again in {wait} s.",
        retry_after=wait,
    )


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
    throttled: ThrottledTills,
    api_key: str,
    card: str | None,
    code: str | None,
) -> LookupResult:
    """Disclose the granted fields of a customer's ranked preferences to a till, and log it."""
    key_hash = api_key_hash(api_key)
    throttled.check(key_hash)
    card_hashes: Hashes = vault.index.all_digests("card", card.encode()) if card else ()
    code_hashes: Hashes = vault.index.all_digests("checkout-code", code.encode()) if code else ()
    row = await batcher.fetch(key_hash, card_hashes, code_hashes)
    if row is None:
        raise Unauthenticated("The API key is not valid.")
    if row["refused_by"] is not None:
        throttled.remember(key_hash, row)
        raise _throttled(row["retry_after"])
    if row["customer_id"] is None:
        raise NotFound(NOT_FOUND)
    customer_id: uuid.UUID = row["customer_id"]
    data_key = vault.envelope.unwrap(customer_id, row["generation"], row["wrapped"])
    fields = row["fields"]
    return LookupResult(
        via=row["via"],
        fields=list(fields),
        preferences=[
            _for_till(rank, shared(data_key, fields, *preference))
            for rank, preference in enumerate(
                zip(
                    row["ids"] or (),
                    row["ranks"] or (),
                    row["statuses"] or (),
                    row["products"] or (),
                    row["attributes"] or (),
                    row["notes"] or (),
                    strict=True,
                ),
                start=1,
            )
        ],
        disclosure_id=row["disclosure_id"],
    )
