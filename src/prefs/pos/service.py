"""The till lookup — the hot path. One statement checks the key, finds the customer, checks
consent, reads the granted fields and records the disclosure; lookups that arrive while one
is in the database share the next statement, its transaction and its commit (group commit)."""

from __future__ import annotations

import asyncio
import copy
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from prefs.crypto import Vault, api_key_hash
from prefs.errors import NotFound, Problem, TooManyRequests, Unavailable
from prefs.pos.schemas import LookupResult
from prefs.preferences.sealed import shared, shown


class InvalidApiKey(Problem):
    status, slug, title = 401, "unauthenticated", "Authentication required"


NOT_FOUND = "No customer preferences can be shown for this card or code."

# Lookup i of a batch sends its key hash ($1, $2) and the hashes of its card or code under
# every index key version, primary first ($3, $4 or $5, $6; should versions disagree, the
# primary's match wins). Each lookup whose key is live gets one row, its shown preferences as
# arrays in rank order (NULLs when nothing is shown); a lookup without a row had no live key.
# Every hit is logged in the same statement: no answer leaves without its record.
LOOKUP = f"""
WITH cred AS MATERIALIZED (
    SELECT r.i, c.credential_id, c.display_name, c.store
    FROM unnest($1::int[], $2::bytea[]) AS r(i, key_hash)
    JOIN credentials c ON c.key_hash = r.key_hash AND c.kind = 'pos' AND c.revoked_at IS NULL
), found AS MATERIALIZED (
    SELECT h.i, h.n, ci.customer_id, g.fields, g.preference_ids, 'card' AS via
    FROM unnest($3::int[], $4::bytea[]) WITH ORDINALITY AS h(i, card_hash, n)
    JOIN card_index ci ON ci.card_hash = h.card_hash
    JOIN consents g ON g.customer_id = ci.customer_id AND g.audience = 'pos'
    WHERE g.expires_at IS NULL OR g.expires_at > now()
    UNION ALL
    SELECT h.i, h.n, k.customer_id, k.fields, k.preference_ids, 'code'
    FROM unnest($5::int[], $6::bytea[]) WITH ORDINALITY AS h(i, code_hash, n)
    JOIN checkout_codes k ON k.code_hash = h.code_hash
    WHERE k.expires_at > now()
), hit AS MATERIALIZED (
    SELECT DISTINCT ON (found.i) found.*, cred.credential_id, cred.display_name, cred.store,
           gen_random_uuid() AS disclosure_id
    FROM found JOIN cred ON cred.i = found.i
    ORDER BY found.i, found.n
), shown AS MATERIALIZED (
    SELECT s.i, array_agg(s.preference_id ORDER BY s.rank) AS ids,
           array_agg(s.rank ORDER BY s.rank) AS ranks,
           array_agg(s.status ORDER BY s.rank) AS statuses,
           array_agg(s.product_ct ORDER BY s.rank) AS products,
           array_agg(s.attributes_ct ORDER BY s.rank) AS attributes,
           array_agg(s.note_ct ORDER BY s.rank) AS notes
    FROM ({shown("i")}) s
    GROUP BY s.i
), logged AS (
    INSERT INTO access_log (disclosure_id, customer_id, actor_kind, credential_id, actor_name,
                            store, purpose, via, preference_ids, fields)
    SELECT hit.disclosure_id, hit.customer_id, 'pos', hit.credential_id, hit.display_name,
           hit.store, 'checkout', hit.via, coalesce(shown.ids, '{{}}'), hit.fields
    FROM hit LEFT JOIN shown ON shown.i = hit.i
)
SELECT cred.i, cred.store, hit.customer_id, hit.fields, hit.via, k.generation, k.wrapped,
       hit.disclosure_id, shown.ids, shown.ranks, shown.statuses, shown.products,
       shown.attributes, shown.notes
FROM cred
LEFT JOIN hit ON hit.i = cred.i
LEFT JOIN customer_keys k ON k.customer_id = hit.customer_id
LEFT JOIN shown ON shown.i = cred.i
"""

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
# and planning it takes longer than running it: its connections keep one generic plan.
LOOKUP_SERVER_SETTINGS = {"plan_cache_mode": "force_generic_plan"}


# Errors the server reports about one lookup's data (data exceptions, integrity, a trigger's
# RAISE, serialisation or deadlock): worth trying each lookup of a refused batch alone. Any other
# error (timeouts, read-only after a failover, disk full) would fail each of them too.
RETRY_ALONE_CLASSES = ("22", "23", "P0", "40")


class LookupBatcher:
    """Group commit for till lookups, per worker process.

    A lookup that finds fewer than ``in_flight`` batches in the database starts one at once, so
    a quiet till waits for nothing. Under load, lookups that arrive meanwhile queue and go
    together, up to ``max_batch``, in the next statement: one plan, one round trip and one WAL
    flush for all of them. If the database refuses a shared batch because of one lookup's data,
    each of its lookups is retried alone, so that one lookup's error is never another's.
    """

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 64, in_flight: int = 1) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.in_flight = in_flight
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
    ) -> list[asyncpg.Record]:
        self.statements += 1
        rows: list[asyncpg.Record] = await conn.fetch(LOOKUP, *_arguments(requests))
        return rows

    async def _run(self, batch: list[Queued]) -> None:
        try:
            async with self.pool.acquire() as conn:
                try:
                    rows = await self._fetch(conn, [request for request, _ in batch])
                except asyncpg.PostgresError as error:
                    if len(batch) == 1 or not str(error.sqlstate).startswith(RETRY_ALONE_CLASSES):
                        raise
                    # rolled back because of some lookup's data: each alone, so that one
                    # lookup's error fails that lookup only
                    for request, future in batch:
                        if future.done():
                            continue  # its request went away: not asked
                        try:
                            alone = await self._fetch(conn, [request])
                        except asyncpg.PostgresError as its_own:
                            future.set_exception(its_own)
                        else:
                            _settle(future, alone[0] if alone else None)
                    return
                per_lookup: list[asyncpg.Record | None] = [None] * len(batch)
                for row in rows:
                    per_lookup[row["i"]] = row
                for (_, future), result in zip(batch, per_lookup, strict=True):
                    _settle(future, result)
        except Exception as error:  # every lookup of the batch gets it
            _fail(batch, error)
        except BaseException:
            _fail(batch, Unavailable("The service is stopping; retry shortly."))
            raise


def _settle(future: asyncio.Future[asyncpg.Record | None], result: asyncpg.Record | None) -> None:
    if not future.done():  # else its request went away while the statement ran: the record stays
        future.set_result(result)


def _fail(batch: list[Queued], error: BaseException) -> None:
    """Hand ``error`` to each lookup still waiting, each its own copy (a traceback grows on the
    exception object each time it is raised)."""
    for _, future in batch:
        if not future.done():
            future.set_exception(copy.copy(error))


class MissThrottle:
    """Counts failed lookups per key and per store in fixed one-minute windows (per process)."""

    WINDOW = 60.0

    def __init__(self, per_key: int, per_store: int) -> None:
        self.limits = {"key": per_key, "store": per_store}
        self.windows: dict[tuple[str, Any], tuple[float, int]] = {}
        self.store_of_key: dict[bytes, str] = {}

    def _retry_after(self, scope: str, who: Any, now: float) -> int | None:
        start, count = self.windows.get((scope, who), (now, 0))
        if now - start < self.WINDOW and count >= self.limits[scope]:
            return max(1, math.ceil(start + self.WINDOW - now))
        return None

    def check(self, key_hash: bytes) -> None:
        now = time.monotonic()
        store = self.store_of_key.get(key_hash)
        for scope, who in (("key", key_hash), ("store", store)):
            if who is not None and (wait := self._retry_after(scope, who, now)) is not None:
                raise TooManyRequests(
                    f"Too many lookups found nothing; try again in {wait} s.",
                    headers={"Retry-After": str(wait)},
                )

    def miss(self, key_hash: bytes, store: str) -> None:
        now = time.monotonic()
        if len(self.windows) > 100_000:
            self.windows = {k: v for k, v in self.windows.items() if now - v[0] < self.WINDOW}
        self.store_of_key[key_hash] = store
        for key in (("key", key_hash), ("store", store)):
            start, count = self.windows.get(key, (now, 0))
            self.windows[key] = (start, count + 1) if now - start < self.WINDOW else (now, 1)


async def lookup(
    batcher: LookupBatcher,
    vault: Vault,
    throttle: MissThrottle,
    api_key: str,
    card: str | None,
    code: str | None,
) -> LookupResult:
    """Disclose the granted fields of a customer's ranked preferences to a till, and log it."""
    key_hash = api_key_hash(api_key)
    throttle.check(key_hash)
    card_hashes: Hashes = vault.index.all_digests("card", card.encode()) if card else ()
    code_hashes: Hashes = vault.index.all_digests("checkout-code", code.encode()) if code else ()
    row = await batcher.fetch(key_hash, card_hashes, code_hashes)
    if row is None:
        raise InvalidApiKey(
            "The API key is not valid.", headers={"WWW-Authenticate": 'Bearer realm="prefs"'}
        )
    if row["customer_id"] is None:
        throttle.miss(key_hash, row["store"])
        raise NotFound(NOT_FOUND)
    customer_id: uuid.UUID = row["customer_id"]
    data_key = vault.envelope.unwrap(customer_id, row["generation"], row["wrapped"])
    fields = row["fields"]
    return LookupResult(
        via=row["via"],
        fields=list(fields),
        preferences=[
            shared(data_key, fields, *preference)
            for preference in zip(
                row["ids"] or (),
                row["ranks"] or (),
                row["statuses"] or (),
                row["products"] or (),
                row["attributes"] or (),
                row["notes"] or (),
                strict=True,
            )
        ],
        disclosure_id=row["disclosure_id"],
    )
