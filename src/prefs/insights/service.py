"""Anonymous demand for discontinued products.

Counting data holds no customer id: each opted-in customer contributes under a keyed pseudonym
(so a withdrawal or erasure takes the contribution back at once) to the groups of their
highest-ranked discontinued preferences (at most ``GROUPS_PER_CUSTOMER``), whose labels are
encrypted with a service key. A product is discontinued by the catalogue's word where it knows
the SKU, else by its customer's: after an import moves a SKU's status, the service recounts the
customers keeping it (``recount_keepers``, run by prefs.retention and `prefs migrate`). What is shown is one release a day with noisy counts
(``mechanism``): groups whose noisy count is under k are withheld.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec

from prefs import product_status
from prefs.crypto import Vault
from prefs.customer_keys import data_key, lock_customer
from prefs.errors import TooManyRequests
from prefs.grants import INSIGHTS, live_grant
from prefs.insights.mechanism import GROUPS_PER_CUSTOMER, noisy_release
from prefs.insights.schemas import DemandGroup, DiscontinuedDemand
from prefs.product_status import overlaid
from prefs.products import Product
from prefs.sealed_preferences import CONTENT, UNINDEXED, open_content

SIZE_KEYS = frozenset(
    {
        "size",
        "waist",
        "leg",
        "inseam",
        "length",
        "chest",
        "neck",
        "collar",
        "sleeve",
        "shoe",
        "width",
        "hip",
        "cup",
        "fit",
    }
)


class _Label(msgspec.Struct):
    product: Product
    size: dict[str, str]


FORGET = "DELETE FROM demand_contributions WHERE pseudonym = ANY($1::bytea[]) RETURNING group_hash"
# Every preference the grant covers, not only those stored as discontinued: where the catalogue
# knows a product's SKU, its status is the catalogue's, and the SKU is sealed.
COVERED = f"""
SELECT preference_id, status, {CONTENT} FROM preferences
WHERE customer_id = $1 AND ($2::uuid[] IS NULL OR preference_id = ANY($2::uuid[]))
ORDER BY rank
"""
ADD_GROUP = (
    "INSERT INTO demand_groups (group_hash, label_ct) VALUES ($1, $2) ON CONFLICT DO NOTHING"
)
# Held until the contribution commits, so a group cannot be dropped from under it; nothing when
# it was dropped between ADD_GROUP and here (then it is made again).
HOLD_GROUP = "SELECT 1 FROM demand_groups WHERE group_hash = $1 FOR KEY SHARE"
CONTRIBUTE = """
INSERT INTO demand_contributions (pseudonym, group_hash) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""


async def refresh(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> None:
    """Recount one customer after their `insights` grant changed: their contributions are taken
    back, then made again if a live grant covers their discontinued items."""
    await conn.execute(FORGET, vault.index.all_digests("demand", customer_id.bytes))
    await _contribute(conn, vault, customer_id, await live_grant(conn, customer_id, INSIGHTS))


async def recount_if_granted(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID
) -> None:
    """Recount one customer after their preferences changed; one query and nothing more for a
    customer without a live `insights` grant (they contribute nothing: the grant's end took
    their contributions back)."""
    grant = await live_grant(conn, customer_id, INSIGHTS)
    if grant is None:
        return
    await conn.execute(FORGET, vault.index.all_digests("demand", customer_id.bytes))
    await _contribute(conn, vault, customer_id, grant)


# The customers with an `insights` grant who keep one of the SKUs (their indexes under every index
# key version), or a preference whose SKU is not indexed yet, which may be one of them. A read of
# every preference (an import that moved statuses is rare; no index is kept on every write). The
# indexes are probed through a hash (a hashed subplan) whatever plan the statement settles on: a
# generic plan runs `= ANY($1)` as a walk of the whole array for every row.
KEEPERS = f"""
SELECT DISTINCT p.customer_id FROM preferences p
JOIN consents g ON g.customer_id = p.customer_id AND g.audience = 'insights'
WHERE p.sku_index IN (SELECT unnest($1::bytea[])) OR {UNINDEXED}
"""
MOVES_AT_ONCE = 10_000  # SKUs per read of the preferences (their indexes hashed in memory)
MOVES_PER_PASS = 1_000_000


async def recount_keepers(conn: asyncpg.Connection, vault: Vault) -> int:
    """Follow the catalogue's status moves: recount each granted customer keeping a SKU whose
    status an import moved, in a transaction of their own under their lock, then forget the
    moves; returns how many customers were recounted. Call outside a transaction; safe to stop
    (the next call finishes) and to run twice at once.

    A pass reads the moves waiting once: each of them committed before any recount of the pass
    began, so a customer recounted for one part of them is not recounted for another."""
    recounted = 0
    while waiting := await product_status.moves(conn, MOVES_PER_PASS):
        done: set[uuid.UUID] = set()
        for start in range(0, len(waiting), MOVES_AT_ONCE):
            moved = waiting[start : start + MOVES_AT_ONCE]
            indexes = vault.index.skus(sku for sku, _ in moved)
            for row in await conn.fetch(KEEPERS, indexes):
                customer_id = row["customer_id"]
                if customer_id in done:
                    continue
                done.add(customer_id)
                async with conn.transaction():
                    if await lock_customer(conn, customer_id):
                        await recount_if_granted(conn, vault, customer_id)
                        recounted += 1
            await product_status.followed(conn, moved)
    return recounted


async def _contribute(
    conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID, grant: asyncpg.Record | None
) -> None:
    if grant is None or "product" not in grant["fields"]:
        return
    index = vault.index
    rows = await conn.fetch(COVERED, customer_id, grant["preference_ids"])
    if not rows:
        return
    key = await data_key(conn, vault, customer_id)
    kept = [(row["status"], open_content(key, row)) for row in rows]
    catalogue = await product_status.held(conn, (content.product.sku for _, content in kept))
    pseudonym = index.digest("demand", customer_id.bytes)
    labels: dict[bytes, bytes] = {}
    for stored, content in kept:
        if overlaid(stored, content.product.sku, catalogue) != "discontinued":
            continue
        size: dict[str, str] = {}
        if "attributes" in grant["fields"]:
            size = {k: v for k, v in sorted(content.attributes.items()) if k in SIZE_KEYS}
        label = msgspec.json.encode(_Label(content.product, size), order="sorted")
        labels.setdefault(index.digest("demand-group", label), label)
        if len(labels) == GROUPS_PER_CUSTOMER:
            break
    for group, label in sorted(labels.items()):  # groups in one order everywhere: no deadlocks
        await conn.execute(ADD_GROUP, group, vault.demand_labels.encrypt(label, group))
        while not await conn.fetchval(HOLD_GROUP, group):
            await conn.execute(ADD_GROUP, group, vault.demand_labels.encrypt(label, group))
        await conn.execute(CONTRIBUTE, pseudonym, group)


# Groups nobody contributes to any more are locked (in group order) before they are deleted in a
# statement of their own: a contribution still being made to one is waited for and then seen, so
# the group stays; one made after waits for the deletion and makes the group again.
UNUSED = """
SELECT group_hash FROM demand_groups g
WHERE ($1::bytea[] IS NULL OR g.group_hash = ANY($1::bytea[]))
  AND NOT EXISTS (SELECT 1 FROM demand_contributions c WHERE c.group_hash = g.group_hash)
ORDER BY g.group_hash
FOR UPDATE
"""
DROP_UNUSED = """
DELETE FROM demand_groups g WHERE g.group_hash = ANY($1::bytea[])
  AND NOT EXISTS (SELECT 1 FROM demand_contributions c WHERE c.group_hash = g.group_hash)
"""


async def drop_unused_groups(conn: asyncpg.Connection, groups: list[bytes] | None = None) -> int:
    """Delete the groups (and their labels) nobody contributes to any more, among ``groups`` or
    all of them; returns how many. Call inside a transaction."""
    unused = [row["group_hash"] for row in await conn.fetch(UNUSED, groups)]
    if not unused:
        return 0
    return int((await conn.execute(DROP_UNUSED, unused)).split()[-1])


async def forget(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> None:
    """Take back every contribution of a customer who is erased, and with them the labels of the
    groups nobody else wants (call inside the erasing transaction)."""
    gone = await conn.fetch(FORGET, vault.index.all_digests("demand", customer_id.bytes))
    await drop_unused_groups(conn, sorted({row["group_hash"] for row in gone}))


TODAY = "(now() AT TIME ZONE 'UTC')::date"
# Inserting the day's row is the day's lock: a second reader waits here until the first has
# drawn and committed the release, then finds the row and draws nothing.
CLAIM_RELEASE = f"""
INSERT INTO demand_releases (released_on, epsilon, k, groups_per_customer)
VALUES ({TODAY}, $1, $2, $3)
ON CONFLICT (released_on) DO NOTHING
RETURNING released_on
"""
# Each pseudonym counts in at most $1 groups even if older data held more (the bound the noise
# is scaled to must hold whatever is stored).
COUNT = """
SELECT group_hash, count(*) AS customers
FROM (
    SELECT group_hash, row_number() OVER (PARTITION BY pseudonym ORDER BY group_hash) AS nth
    FROM demand_contributions
) AS counted
WHERE nth <= $1
GROUP BY group_hash
"""
# A group dropped meanwhile (nobody wants it any more) is left out, not failed on.
KEEP_RELEASE = """
INSERT INTO demand_release_groups (released_on, group_hash, customers)
SELECT $1, g.group_hash, shown.customers
FROM unnest($2::bytea[], $3::int[]) AS shown (group_hash, customers)
JOIN demand_groups g USING (group_hash)
FOR KEY SHARE OF g
"""
LATEST = """
SELECT released_on, epsilon, k, groups_per_customer FROM demand_releases
ORDER BY released_on DESC LIMIT 1
"""
RELEASED = """
SELECT g.group_hash, g.label_ct, r.customers
FROM demand_release_groups r JOIN demand_groups g USING (group_hash)
WHERE r.released_on = $1
ORDER BY r.customers DESC, g.group_hash
"""


async def _release_today(conn: asyncpg.Connection, k: int, epsilon: float) -> None:
    """Draw today's release unless it was drawn already (one noise draw per day, ever)."""
    async with conn.transaction():
        today = await conn.fetchval(CLAIM_RELEASE, epsilon, k, GROUPS_PER_CUSTOMER)
        if today is None:
            return
        counts = {
            row["group_hash"]: row["customers"]
            for row in await conn.fetch(COUNT, GROUPS_PER_CUSTOMER)
        }
        shown = noisy_release(counts, epsilon=epsilon, k=k)
        await conn.execute(KEEP_RELEASE, today, list(shown), list(shown.values()))


async def discontinued_demand(
    conn: asyncpg.Connection, vault: Vault, k: int, epsilon: float
) -> DiscontinuedDemand:
    """The latest daily release (drawn now by the day's first reader): noisy counts >= k only."""
    await _release_today(conn, k, epsilon)
    release = await conn.fetchrow(LATEST)
    assert release is not None  # today's, at least
    groups = []
    for row in await conn.fetch(RELEASED, release["released_on"]):
        label = msgspec.json.decode(
            vault.demand_labels.decrypt(row["label_ct"], row["group_hash"]), type=_Label
        )
        groups.append(
            DemandGroup(product=label.product, size=label.size, customers=row["customers"])
        )
    return DiscontinuedDemand(
        released_on=release["released_on"],
        epsilon=release["epsilon"],
        groups_per_customer=release["groups_per_customer"],
        k=release["k"],
        groups=groups,
    )


COUNT_READ = f"""
INSERT INTO insights_reads (credential_id, read_on, reads) VALUES ($1, {TODAY}, 1)
ON CONFLICT (credential_id, read_on) DO UPDATE SET reads = insights_reads.reads + 1
WHERE insights_reads.reads < $2
RETURNING reads
"""


async def count_read(
    conn: asyncpg.Connection, credential_id: uuid.UUID, reads_per_day: int
) -> None:
    """Count one read by this key today; refused (429) past ``reads_per_day``."""
    if await conn.fetchval(COUNT_READ, credential_id, reads_per_day) is None:
        now = datetime.now(UTC)
        tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        wait = max(1, int((tomorrow - now).total_seconds()))
        raise TooManyRequests(
            f"This key has read the discontinued demand {reads_per_day} times today; "
            "the release changes once a day (UTC).",
            retry_after=wait,
        )


RELEASES_KEPT_DAYS = 7
OLD_RELEASES = f"DELETE FROM demand_releases WHERE released_on < {TODAY} - $1::int"
OLD_READS = f"DELETE FROM insights_reads WHERE read_on < {TODAY}"


async def purge_old_releases(conn: asyncpg.Connection) -> int:
    """Drop releases older than a week and read counts of past days; returns how many rows."""
    releases = await conn.execute(OLD_RELEASES, RELEASES_KEPT_DAYS)
    reads = await conn.execute(OLD_READS)
    return int(releases.split()[-1]) + int(reads.split()[-1])
