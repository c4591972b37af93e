"""The till lookup — the hot path. Lookups that arrive while a batch is in the database share
the next batch (group commit, prefs.group_commit), and a batch is one lookup statement, one insert
and one commit whatever its size. The lookup statement checks the keys and the miss throttle,
finds the customers, checks consent and reads the granted fields, all in one snapshot;
INSERT_SEALED records the disclosures, sealed under each customer's data key, and commits them
before anyone is answered. Misses are counted, and refused, by prefs.throttle.

The lookup statement follows the database's layout (PREFS_DATABASE_LAYOUT). On one PostgreSQL
(``single``) it is LOOKUP, which joins the keys, cards, codes and customers' rows as it goes. On a
cluster (``distributed``, docs/scale-out.md) every table must be read by its distribution column
equal to a parameter: ROUTE first reads which stores the till keys belong to and which customers
the cards and codes name, then LOOKUP_ROUTED reads the keys, cards and codes by their hashes, the
stores' misses by store and the customers' rows by customer_id. The route is a round trip more
per batch, which one node does not pay (docs/scale-out.md has the measured cost)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from prefs.credentials import live_key
from prefs.crypto import DataKey, DecryptionError, Vault, api_key_hash
from prefs.disclosures import INSERT_SEALED, Visit, seal
from prefs.errors import NotFound, Unauthenticated
from prefs.grants import IN_FORCE
from prefs.group_commit import GroupCommit, Queued, fail_all
from prefs.pos.schemas import LookupResult, TillPreference
from prefs.product_status import VERSION as CATALOGUE_VERSION
from prefs.product_status import StatusCache
from prefs.products import SharedPreference, Status
from prefs.sealed_preferences import shared, shown
from prefs.throttle import MISS_WINDOW, NOT_FOUND, ThrottledTills, count_misses, throttled

# Both layouts' lookup statements end alike. Once each lookup with a live key has its key's row
# (cred: the key's and its store's misses in the window) and what its card or code found (found,
# at most one customer per lookup), the batch is judged: a lookup is refused when its key or store
# has used up its misses ($7, $8), counting the misses of earlier lookups in the batch that were
# not refused; every other lookup that found a customer is a hit, with a disclosure_id.
#
# A lookup is refused for the misses of the earlier lookups in its batch, and whether one of
# those missed may depend on a code that an earlier lookup still bound (so on whether that one
# was refused): judged at once, a batch could bind a code for a lookup it then refuses. So a code
# is bound only by its first user in the batch, and only when that lookup is safe: not refused
# even if every earlier lookup of its key and store missed (first_user counts them). A lookup of
# a code left unbound that is not refused is undecided: its row says so, and the batch is looked
# up again in two parts (_entangled): the lookups whose verdicts cannot depend on an undecided
# one's, then the others, from the first undecided one on (first in its batch, a lookup is always
# safe or refused). Only a till near its limit meets this; the binds a batch makes are those its
# lookups would make one by one.
_FIRST_USERS = """SELECT DISTINCT ON (h.code_hash) h.code_hash, cred.store,
               cred.key_misses + (SELECT count(*) FROM cred e
                                  WHERE e.key_hash = cred.key_hash AND e.i < cred.i) < $7::int
               AND cred.store_misses + (SELECT count(*) FROM cred e
                                        WHERE e.store = cred.store AND e.i < cred.i) < $8::int
               AS safe
        FROM unnest($5::int[], $6::bytea[]) AS h(i, code_hash) JOIN cred ON cred.i = h.i
        ORDER BY h.code_hash, h.i"""


def _judged(key_limit: str = "$7", store_limit: str = "$8") -> str:
    """The batch judged, the misses allowed per key and per store being these parameters."""
    return f"""judged AS MATERIALIZED (
    SELECT j.*, CASE WHEN NOT (j.missed OR j.key_throttled OR j.store_throttled)
                     THEN gen_random_uuid() END AS disclosure_id
    FROM (
        SELECT k.*, k.store_misses + count(*) FILTER (WHERE k.missed AND NOT k.key_throttled)
                    OVER (PARTITION BY k.store ORDER BY k.i
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= {store_limit}::int
                    AS store_throttled
        FROM (
            SELECT cred.*, f.customer_id, f.fields, f.preference_ids, f.via,
                   f.i IS NULL AS missed,
                   cred.key_misses + count(*) FILTER (WHERE f.i IS NULL)
                       OVER (PARTITION BY cred.key_hash ORDER BY cred.i
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) >= {key_limit}::int
                       AS key_throttled
            FROM cred LEFT JOIN found f ON f.i = cred.i
        ) k
    ) j
), hit AS NOT MATERIALIZED (
    SELECT * FROM judged WHERE disclosure_id IS NOT NULL
)"""


def _per_lookup(preferences: str) -> str:
    """Each hit's shown ``preferences`` (a query of sealed_preferences.shown carrying i) as
    arrays in rank order, one row per lookup."""
    return f"""SELECT s.i, array_agg(s.preference_id ORDER BY s.rank) AS ids,
           array_agg(s.rank ORDER BY s.rank) AS ranks,
           array_agg(s.status ORDER BY s.rank) AS statuses,
           array_agg(s.product_ct ORDER BY s.rank) AS products,
           array_agg(s.attributes_ct ORDER BY s.rank) AS attributes,
           array_agg(s.note_ct ORDER BY s.rank) AS notes,
           array_agg(s.sealed ORDER BY s.rank) AS sealed
    FROM ({preferences}) s
    GROUP BY s.i"""


PROBE_KEYS = """LEFT JOIN LATERAL (
    SELECT k.generation, k.wrapped FROM customer_keys k
    WHERE k.customer_id = j.customer_id AND j.disclosure_id IS NOT NULL OFFSET 0
) k ON true"""


def _rows(keys: str, undecided: str = "j.i IN (SELECT u.i FROM unsettled u)") -> str:
    """One row per judged lookup, a refused one carrying nothing of what was found; a hit's data
    key comes from ``keys`` (a join naming ``k``: customer_keys probed per hit, or a CTE that
    read them), its preferences from shown; ``undecided`` says which missed lookups the batch
    could not judge (_FIRST_USERS)."""
    return f"""SELECT j.i, j.store, j.credential_id, j.display_name,
       j.missed AND NOT (j.key_throttled OR j.store_throttled) AS counted_miss,
       j.missed AND NOT (j.key_throttled OR j.store_throttled)
           AND {undecided} AS undecided,
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
{keys}
LEFT JOIN shown ON shown.i = j.i
"""


# Lookup i of a batch sends its key hash ($1, $2) and the hashes of its card or code under
# every index key version, primary first ($3, $4 or $5, $6; should versions disagree, the
# primary's match wins); $7 and $8 are the misses per minute allowed per key and per store. Each
# lookup whose key is live gets one row: refused (refused_by its store, else its key, with
# retry_after) when its key or store has used up its misses, counting the misses of earlier
# lookups in the batch that were not refused; otherwise its shown preferences as arrays in rank
# order (NULLs when nothing is shown). A refused row carries nothing of what was found. A lookup
# without a row had no live key. Every hit (a row with a disclosure_id) is logged, sealed under
# its customer's data key, by the batch's next statement (INSERT_SEALED) before any lookup of the
# batch is answered: no answer leaves without its committed record. Misses are counted
# afterwards, by count_misses.
#
# LOOKUP is the layout ``single``'s: one statement, each table joined where it is needed.
# LOOKUP's code CTEs: which lookup uses each code first, the codes bound, the code lookups
# the batch cannot judge (_FIRST_USERS)
_CODE_CTES = f"""), first_user AS MATERIALIZED (  -- a code is bound to the first store whose till uses it
    {_FIRST_USERS}
), bound AS (
    UPDATE checkout_codes k
    SET store = (SELECT f.store FROM first_user f WHERE f.code_hash = k.code_hash)
    WHERE k.code_hash = ANY($6::bytea[]) AND k.store IS NULL AND k.expires_at > now()
      AND (SELECT f.safe FROM first_user f WHERE f.code_hash = k.code_hash)
    RETURNING k.code_hash, k.store
), unsettled AS MATERIALIZED (
    SELECT h.i FROM unnest($5::int[], $6::bytea[]) AS h(i, code_hash)
    CROSS JOIN LATERAL (
        SELECT 1 FROM checkout_codes k
        WHERE k.code_hash = h.code_hash AND k.store IS NULL AND k.expires_at > now() OFFSET 0
    ) k
    WHERE NOT EXISTS (SELECT 1 FROM bound b WHERE b.code_hash = h.code_hash)
"""
# found's lookups by code: the code in force and bound (now or by this batch) to the till's store
_BY_CODE = """        UNION ALL
        SELECT h.i, h.n, k.customer_id, k.fields, k.preference_ids, 'code'
        FROM unnest($5::int[], $6::bytea[]) WITH ORDINALITY AS h(i, code_hash, n)
        JOIN cred ON cred.i = h.i
        CROSS JOIN LATERAL (  -- one index probe per code, never a scan of all live codes
            SELECT * FROM checkout_codes k
            WHERE k.code_hash = h.code_hash AND k.expires_at > now() OFFSET 0
        ) k
        WHERE coalesce(k.store, (SELECT b.store FROM bound b WHERE b.code_hash = k.code_hash))
              = cred.store
"""


def _lookup(codes: bool) -> str:
    """LOOKUP, or (``codes`` false) LOOKUP_CARDS: the same without its code CTEs and lookups by
    code, its limits then $5 and $6."""
    code_ctes, by_code = (_CODE_CTES, _BY_CODE) if codes else ("", "")
    judged = _judged() if codes else _judged("$5", "$6")
    rows = _rows(PROBE_KEYS) if codes else _rows(PROBE_KEYS, undecided="false")
    return f"""
WITH cred AS MATERIALIZED (
    SELECT r.i, r.key_hash, c.credential_id, c.display_name, c.store,
           coalesce(mk.misses, 0) AS key_misses, mk.window_start AS key_window,
           coalesce(ms.misses, 0) AS store_misses, ms.window_start AS store_window
    FROM unnest($1::int[], $2::bytea[]) AS r(i, key_hash)
    CROSS JOIN LATERAL (
        SELECT * FROM credentials c WHERE {live_key("c", "r.key_hash", "'pos'")} OFFSET 0
    ) c
    LEFT JOIN LATERAL (
        SELECT * FROM key_misses mk
        WHERE mk.key_hash = r.key_hash AND mk.window_start > now() - {MISS_WINDOW} OFFSET 0
    ) mk ON true
    LEFT JOIN LATERAL (
        SELECT * FROM store_misses ms
        WHERE ms.store = c.store AND ms.window_start > now() - {MISS_WINDOW} OFFSET 0
    ) ms ON true
{code_ctes}), found AS MATERIALIZED (
    SELECT DISTINCT ON (f.i) f.* FROM (  -- card_index: proven cards only (prefs.cards)
        SELECT h.i, h.n, ci.customer_id, g.fields, g.preference_ids, 'card' AS via
        FROM unnest($3::int[], $4::bytea[]) WITH ORDINALITY AS h(i, card_hash, n)
        CROSS JOIN LATERAL (
            SELECT ci.customer_id FROM card_index ci WHERE ci.card_hash = h.card_hash OFFSET 0
        ) ci
        CROSS JOIN LATERAL (
            SELECT g.fields, g.preference_ids FROM consents g
            WHERE g.customer_id = ci.customer_id AND g.audience = 'pos' AND {IN_FORCE} OFFSET 0
        ) g
{by_code}    ) f
    ORDER BY f.i, f.n
), {judged}, shown AS MATERIALIZED (
    {_per_lookup(shown("i", probe=True))}
)
{rows}"""


LOOKUP = _lookup(codes=True)
# A batch of cards only (most batches) is spared the code CTEs, about a tenth of the statement's
# time: LOOKUP's $1 to $4, and its limits as $5 and $6.
LOOKUP_CARDS = _lookup(codes=False)

# The layout ``distributed``'s route: the stores of a batch's live till keys ($1), and the
# customers its cards ($2) and codes ($3) name under any index key version. LOOKUP_ROUTED needs
# them before it can read a store's misses by store or a customer's rows by customer_id, and they
# are known only once credentials, card_index and checkout_codes are read. The route only narrows
# what LOOKUP_ROUTED reads: that reads the keys, cards and codes again and decides everything in
# its own snapshot, so a card that moved or a code that ended in between is a miss, never an
# answer from the older read.
ROUTE = f"""
SELECT array(
           SELECT DISTINCT c.store FROM credentials c
           WHERE {live_key("c", "ANY($1::bytea[])", "'pos'")}
       ) AS stores,
       array(
           SELECT ci.customer_id FROM card_index ci WHERE ci.card_hash = ANY($2::bytea[])
           UNION
           SELECT k.customer_id FROM checkout_codes k WHERE k.code_hash = ANY($3::bytea[])
       ) AS customers
"""
# The layout ``distributed``'s lookup: LOOKUP's arguments and rows, and $9 and $10, the batch's
# customers and stores as ROUTE found them (a card or code whose customer is not among them is a
# miss). Each table of a shard group is read by its distribution column equal to a parameter,
# once per batch (docs/scale-out.md): key_misses, store_misses, card_index, checkout_codes (read,
# then bound), the customers' grants (consents) and data keys (customer_keys) each on their own,
# and their preferences joined on customer_keys by customer_id; the till keys (credentials, a
# reference table) by their hashes too. The rest joins what was read, in memory. The reads by hash
# are MATERIALIZED so that each is one index scan for the whole batch: a probe per lookup that also
# carried the = ANY would sort the batch's array again for every probe. A read by = ANY stays an
# index scan by its key however small the table was when the kept plan was made; a join there
# turns into a hash join over the whole index when the table is nearly empty.
LOOKUP_ROUTED = f"""
WITH key_window AS MATERIALIZED (
    SELECT mk.key_hash, mk.misses, mk.window_start FROM key_misses mk
    WHERE mk.key_hash = ANY($2::bytea[])
), store_window AS MATERIALIZED (
    SELECT ms.store, ms.misses, ms.window_start FROM store_misses ms
    WHERE ms.store = ANY($10::text[])
), till AS MATERIALIZED (
    SELECT c.key_hash, c.credential_id, c.display_name, c.store FROM credentials c
    WHERE {live_key("c", "ANY($2::bytea[])", "'pos'")}
), cred AS MATERIALIZED (
    SELECT r.i, r.key_hash, c.credential_id, c.display_name, c.store,
           coalesce(mk.misses, 0) AS key_misses, mk.window_start AS key_window,
           coalesce(ms.misses, 0) AS store_misses, ms.window_start AS store_window
    FROM unnest($1::int[], $2::bytea[]) AS r(i, key_hash)
    JOIN till c ON c.key_hash = r.key_hash
    LEFT JOIN key_window mk ON mk.key_hash = r.key_hash
        AND mk.window_start > now() - {MISS_WINDOW}
    LEFT JOIN store_window ms ON ms.store = c.store
        AND ms.window_start > now() - {MISS_WINDOW}
), code AS MATERIALIZED (
    SELECT k.code_hash, k.customer_id, k.store, k.fields, k.preference_ids, k.expires_at
    FROM checkout_codes k WHERE k.code_hash = ANY($6::bytea[])
), binding AS MATERIALIZED (  -- a code is bound to the first store whose till uses it
    SELECT first.code_hash, first.store
    FROM ({_FIRST_USERS}) first
    JOIN code k ON k.code_hash = first.code_hash
    WHERE first.safe AND k.store IS NULL AND k.expires_at > now()
), bound AS (
    UPDATE checkout_codes k
    SET store = (SELECT b.store FROM binding b WHERE b.code_hash = k.code_hash)
    WHERE k.code_hash = ANY($6::bytea[]) AND k.store IS NULL
      AND (SELECT b.store FROM binding b WHERE b.code_hash = k.code_hash) IS NOT NULL
    RETURNING k.code_hash, k.store
), unsettled AS MATERIALIZED (  -- code lookups the batch cannot judge (_FIRST_USERS)
    SELECT h.i FROM unnest($5::int[], $6::bytea[]) AS h(i, code_hash)
    JOIN code k ON k.code_hash = h.code_hash
    WHERE k.store IS NULL AND k.expires_at > now()
      AND NOT EXISTS (SELECT 1 FROM bound b WHERE b.code_hash = h.code_hash)
), card AS MATERIALIZED (  -- card_index: proven cards only (prefs.cards)
    SELECT ci.card_hash, ci.customer_id FROM card_index ci WHERE ci.card_hash = ANY($4::bytea[])
), pos_grant AS MATERIALIZED (  -- their grants to tills in force
    SELECT g.customer_id, g.fields, g.preference_ids FROM consents g
    WHERE g.customer_id = ANY($9::uuid[]) AND g.audience = 'pos' AND {IN_FORCE}
), data_key AS MATERIALIZED (  -- apart: a hit whose key row is gone fails alone, as in LOOKUP
    SELECT dk.customer_id, dk.generation, dk.wrapped FROM customer_keys dk
    WHERE dk.customer_id = ANY($9::uuid[])
), found AS MATERIALIZED (
    SELECT DISTINCT ON (f.i) f.* FROM (
        SELECT h.i, h.n, ci.customer_id, g.fields, g.preference_ids, 'card' AS via
        FROM unnest($3::int[], $4::bytea[]) WITH ORDINALITY AS h(i, card_hash, n)
        JOIN card ci ON ci.card_hash = h.card_hash
        JOIN pos_grant g ON g.customer_id = ci.customer_id
        UNION ALL
        SELECT h.i, h.n, k.customer_id, k.fields, k.preference_ids, 'code'
        FROM unnest($5::int[], $6::bytea[]) WITH ORDINALITY AS h(i, code_hash, n)
        JOIN cred ON cred.i = h.i
        JOIN code k ON k.code_hash = h.code_hash
        WHERE k.expires_at > now() AND k.customer_id = ANY($9::uuid[])
          AND coalesce(k.store, (SELECT b.store FROM bound b WHERE b.code_hash = k.code_hash))
              = cred.store
    ) f
    ORDER BY f.i, f.n
), {_judged()}, shown AS MATERIALIZED (  -- each customer's preferences, read once for their hits
    SELECT s.* FROM customer_keys dk
    CROSS JOIN LATERAL (
        {_per_lookup(shown("i", customer="dk.customer_id"))}
    ) s
    WHERE dk.customer_id = ANY($9::uuid[])
)
{_rows("LEFT JOIN data_key k ON k.customer_id = j.customer_id AND j.disclosure_id IS NOT NULL")}"""


def _log_visits(
    vault: Vault, rows: Sequence[asyncpg.Record]
) -> tuple[list[Any], dict[int, DataKey], dict[int, Exception]]:
    """The sealed access-log records of a batch's hits (INSERT_SEALED's arguments), the data key
    of each (by lookup, unwrapped once: it opens the preferences too), and the error of each hit
    whose data key cannot be unwrapped (that lookup fails alone, unlogged)."""
    ids: list[uuid.UUID] = []
    customers: list[uuid.UUID] = []
    sealed: list[bytes] = []
    keys: dict[int, DataKey] = {}
    broken: dict[int, Exception] = {}
    for row in rows:
        disclosure_id = row["disclosure_id"]
        if disclosure_id is None:
            continue
        try:
            if row["wrapped"] is None:  # its key row is gone: as unreadable as a damaged one
                raise DecryptionError
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
        keys[row["i"]] = key
    return [ids, customers, sealed], keys, broken


def _answer(
    row: asyncpg.Record, data_key: DataKey, catalogue: Mapping[str, Status]
) -> LookupResult:
    """What a hit's till is shown: its preferences opened, with only the granted fields."""
    fields = row["fields"]
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


# The lookup's plans depend on no parameter's value (the arrays are keys, looked up by index),
# and planning them takes longer than running them: their connections keep one generic plan of
# each statement. A plan lasts as long as the connection, so it must not depend on how small a
# table was when it was made: every table is reached through an index, by a probe from what the
# till sent (LOOKUP's LATERAL … OFFSET 0 subqueries, which no table size turns into a read of a
# whole index joined afterwards; tests/test_lookup_batching.py plans it on nearly empty tables). Disabling sequential scans
# inflates the plan's cost past jit_above_cost, and a server built with LLVM (Debian's PostgreSQL
# is) then compiles every lookup: about 1 s each. JIT is off on these connections.
LOOKUP_SERVER_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "jit": "off",
}
# The same, for one transaction: behind a pooler in transaction mode a connection's session is
# not ours between transactions (and PgBouncer refuses these as start-up parameters). There a
# batch's statements go in one transaction that begins with these, and are planned again for
# each batch (their plans are not kept between transactions either).
LOOKUP_LOCAL_SETTINGS = "; ".join(
    f"SET LOCAL {name} = {value}" for name, value in LOOKUP_SERVER_SETTINGS.items()
)


class _Undecided(Exception):
    """A batch with lookups it cannot judge at once (_FIRST_USERS): their places in the batch
    (``undecided``), and the store of each lookup with a live key (``stores``)."""

    def __init__(self, undecided: set[int], stores: dict[int, str]) -> None:
        super().__init__(sorted(undecided))
        self.undecided = undecided
        self.stores = stores


def _entangled(requests: Sequence[Request], undecided: _Undecided) -> set[int]:
    """The lookups whose verdicts may depend on an undecided lookup's: the undecided ones and,
    after the first of them, each lookup that shares a till key, a store or a code with one of
    these before it. A lookup's verdict reads only the lookups before it of its key, its store
    and its code: the others' verdicts stand whatever the undecided ones' turn out to be."""
    keys: set[bytes] = set()
    stores: set[str] = set()
    codes: set[bytes] = set()
    entangled: set[int] = set()
    for i in range(min(undecided.undecided), len(requests)):
        key_hash, _, code_hashes = requests[i]
        store = undecided.stores.get(i)
        if (
            i in undecided.undecided
            or key_hash in keys
            or store in stores
            or not codes.isdisjoint(code_hashes)
        ):
            entangled.add(i)
            keys.add(key_hash)
            codes.update(code_hashes)
            if store is not None:
                stores.add(store)
    return entangled


# What a lookup's batch answers: a hit's answer, or the row of a lookup that found nothing to
# show (refused, or a miss), or None (no live key).
Looked = LookupResult | asyncpg.Record | None


class LookupBatcher(GroupCommit[Request, Looked]):
    """Till lookups in group commit (prefs.group_commit), per worker process: each batch is one
    lookup statement (after its route when ``routed``), one insert of its hits' sealed access-log
    records (when any was found) and one WAL flush; its misses are counted (prefs.throttle)
    before they are answered.
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
        routed: bool,
        settings_per_transaction: bool = False,
    ) -> None:
        super().__init__(pool, max_batch, in_flight)
        # True on a cluster (PREFS_DATABASE_LAYOUT=distributed): ROUTE, then LOOKUP_ROUTED
        self.routed = routed
        # True behind a transaction pooler: LOOKUP_LOCAL_SETTINGS in each batch's transaction
        self.settings_per_transaction = settings_per_transaction
        self.vault = vault  # seals each hit's access-log record under its customer's data key
        self.limits = (misses_per_key, misses_per_store)  # per minute, across all workers
        self.statements = 0  # lookup statements sent, for tests and the curious
        self.catalogue = StatusCache()  # the catalogue's statuses, as of the version last seen

    async def fetch(self, key_hash: bytes, cards: Hashes, codes: Hashes) -> Looked:
        """What one lookup found, from whichever batch carried it."""
        return await self.submit((key_hash, cards, codes))

    async def _fetch(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> tuple[list[asyncpg.Record], dict[int, LookupResult | Exception]]:
        """The batch's rows and, once the records of its hits are committed, each hit's answer
        (or the error that fails it alone, such as a data key that cannot be unwrapped)."""
        # A batch that may bind codes may also be looked up again in parts (_Undecided): its
        # binds are undone with it, else a till refused when looked up again (for misses another
        # worker counted meanwhile) would keep the code the first look bound for it.
        binds = len(requests) > 1 and any(codes for _, _, codes in requests)
        if not (self.settings_per_transaction or binds):
            return await self._lookup_and_log(conn, requests)
        async with conn.transaction():
            if self.settings_per_transaction:
                await conn.execute(LOOKUP_LOCAL_SETTINGS)
            return await self._lookup_and_log(conn, requests)

    async def _lookup_and_log(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> tuple[list[asyncpg.Record], dict[int, LookupResult | Exception]]:
        rows = await self._look_up(conn, requests)
        if len(requests) > 1:
            undecided = {row["i"] for row in rows if row["undecided"]}
            if undecided:  # before anything is logged or counted; its binds are rolled back
                raise _Undecided(undecided, {row["i"]: row["store"] for row in rows})
        visits, keys, broken = _log_visits(self.vault, rows)
        answers: dict[int, LookupResult | Exception] = dict(broken)
        if not keys:
            return rows, answers
        catalogue = await self.catalogue.current(conn, rows[0]["catalogue_version"])
        # The hits' answers are opened while their records are committed: the insert goes out
        # first (its task sends it on the loop's next turn, before this one goes on), and no
        # answer leaves before it returns. The insert's task is awaited whatever happens, so the
        # connection goes back to the pool only once the database is done with it.
        insert = asyncio.ensure_future(conn.execute(INSERT_SEALED, *visits))
        try:
            await asyncio.sleep(0)
            for row in rows:
                key = keys.get(row["i"])
                if key is not None:
                    try:
                        answers[row["i"]] = _answer(row, key, catalogue)
                    except Exception as error:  # this lookup's own (a damaged ciphertext)
                        answers[row["i"]] = error
        except BaseException:  # cancelled meanwhile: that stands, whatever the insert meets
            with contextlib.suppress(Exception):
                await insert
            raise
        await insert
        return rows, answers

    async def _look_up(
        self, conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record], requests: Sequence[Request]
    ) -> list[asyncpg.Record]:
        """The batch's rows: LOOKUP's, or when routed, ROUTE's and then LOOKUP_ROUTED's."""
        arguments = _arguments(requests)
        if not self.routed:
            self.statements += 1
            if arguments[5]:
                return await conn.fetch(LOOKUP, *arguments, *self.limits)
            return await conn.fetch(LOOKUP_CARDS, *arguments[:4], *self.limits)
        _, keys, _, cards, _, codes = arguments
        route = await conn.fetchrow(ROUTE, keys, cards, codes)
        assert route is not None  # one row, always
        if not route["stores"]:
            return []  # no live key: each lookup is answered 401
        self.statements += 1
        return await conn.fetch(
            LOOKUP_ROUTED, *arguments, *self.limits, route["customers"], route["stores"]
        )

    async def commit(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: Sequence[Queued[Request, Looked]],
    ) -> None:
        """Answer each lookup: a hit with what it is shown, anything else with its row, misses
        only once they are counted."""
        try:
            rows, answers = await self._fetch(conn, [queued.request for queued in batch])
        except _Undecided as undecided:  # a till near its limit used a code
            # Judging a lookup reads only the lookups before it of its key, store and code: the
            # lookups not entangled with an undecided one (all those before the first) are
            # answered as a batch, judged as before (unless another worker counted misses
            # meanwhile), then the entangled ones, in order, whose first is always decided (first
            # in its batch, it is safe or refused). Each part keeps the batch's order, and no
            # lookup of the first part follows one of the second that it shares anything with:
            # the answers are those of the lookups one by one. The other tills' lookups cost one
            # more look each, however many codes a till near its limit brings: only the lookups
            # entangled with its own (its key's, its store's, its codes') are looked up again
            # once per undecided lookup.
            entangled = _entangled([queued.request for queued in batch], undecided)
            parts = (
                [queued for i, queued in enumerate(batch) if i not in entangled],
                [queued for i, queued in enumerate(batch) if i in entangled],
            )
            for part in parts:
                waiting = [queued for queued in part if not queued.future.done()]
                if not waiting:
                    continue
                try:  # like any batch: a lookup the database refuses fails alone
                    await self.commit_or_each_alone(conn, waiting)
                except asyncpg.PostgresError as theirs:
                    fail_all(waiting, theirs)
            return
        per_lookup: list[asyncpg.Record | None] = [None] * len(batch)
        for found in rows:
            per_lookup[found["i"]] = found
        misses = []
        for i, (queued, row) in enumerate(zip(batch, per_lookup, strict=True)):
            answer = answers.get(i)
            if isinstance(answer, Exception):
                queued.fail(answer)  # its own: raised once
            elif answer is not None:
                queued.settle(answer)
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
    found = await batcher.fetch(key_hash, card_hashes, code_hashes)
    if isinstance(found, LookupResult):
        return found
    if found is None:
        raise Unauthenticated("The API key is not valid.")
    if found["refused_by"] is not None:
        refused.remember(key_hash, found)
        raise throttled(found["retry_after"])
    raise NotFound(NOT_FOUND)
