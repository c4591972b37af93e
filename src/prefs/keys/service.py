"""Key management: master-key rotation and retirement, index-key rotation."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from prefs.crypto import Vault
from prefs.errors import Conflict
from prefs.insights import service as insights
from prefs.preferences import service as preferences

BATCH = """
SELECT customer_id, generation, wrapped FROM customer_keys
WHERE master_version < $1
ORDER BY customer_id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
REWRAP = """
UPDATE customer_keys SET wrapped = $3, master_version = $4, rewrapped_at = now()
WHERE customer_id = $1 AND wrapped = $2
"""


# The label header holds the version big-endian, so byte order is number order.
LABEL_BATCH = """
SELECT group_hash, label_ct FROM demand_groups
WHERE substring(label_ct FROM 2 FOR 4) < int4send($1)
LIMIT $2
FOR UPDATE SKIP LOCKED
"""
RELABEL = "UPDATE demand_groups SET label_ct = $3 WHERE group_hash = $1 AND label_ct = $2"


async def rotate(
    conn: asyncpg.Connection,
    vault: Vault,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Rewrap every data key under an older master key than the primary, batch by batch, then
    re-encrypt the demand labels (the only data sealed directly under a master key).

    Only forward: run from a host whose keyring still has an older primary (a rolling deploy
    not finished), it leaves wraps under newer versions alone.

    Safe while serving and beside other rotations: each batch locks its rows with SKIP LOCKED,
    and each write is a compare-and-set on the old value. Resumable: it only ever looks at what
    is left. Data ciphertexts are untouched. Returns how many keys this run rewrapped.
    """
    await refuse_a_retired_primary(conn, vault)
    primary = vault.envelope.master.primary
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(BATCH, primary, batch_size)
            if not rows:
                break
            for row in rows:
                rewrapped = vault.envelope.rewrap(
                    row["customer_id"], row["generation"], row["wrapped"]
                )
                status = await conn.execute(
                    REWRAP, row["customer_id"], row["wrapped"], rewrapped, primary
                )
                done += status.endswith(" 1")
        if progress is not None:
            progress(done)
    while True:
        async with conn.transaction():
            rows = await conn.fetch(LABEL_BATCH, primary, batch_size)
            if not rows:
                return done
            for row in rows:
                label = vault.demand_labels.decrypt(row["label_ct"], row["group_hash"])
                await conn.execute(
                    RELABEL,
                    row["group_hash"],
                    row["label_ct"],
                    vault.demand_labels.encrypt(label, row["group_hash"]),
                )


@dataclass(frozen=True)
class KeyStatus:
    master_primary: int
    wraps_by_master_version: dict[int, int]
    retired_master_versions: list[int]
    index_primary: int
    cards_by_index_version: dict[int, int]
    subjects_by_index_version: dict[int, int]
    ledger_records_by_index_version: dict[int, int]
    customers_not_under_index_primary: int  # they move over when they next sign in
    cards_not_under_index_primary: int  # `prefs keys reindex` moves them
    # found only under versions missing from the keyring: they cannot sign in until one is back
    customers_stranded: int = 0


WRAPS = "SELECT master_version, count(*) FROM customer_keys GROUP BY 1 ORDER BY 1"
RETIRED = "SELECT version FROM retired_master_keys ORDER BY 1"
CARDS = "SELECT index_version, count(*) FROM card_index GROUP BY 1 ORDER BY 1"
SUBJECTS = "SELECT index_version, count(*) FROM customer_subjects GROUP BY 1 ORDER BY 1"
LEDGER = "SELECT mac_version, count(*) FROM consent_ledger GROUP BY 1 ORDER BY 1"
# Customers (with a card) who have no subject hash (card blind index) under any of $1.
SUBJECTS_OUTSIDE = """
SELECT count(DISTINCT s.customer_id) FROM customer_subjects s WHERE NOT EXISTS (
    SELECT 1 FROM customer_subjects o
    WHERE o.customer_id = s.customer_id AND o.index_version = ANY($1::int[])
)
"""
CARDS_OUTSIDE = """
SELECT count(*) FROM customers c WHERE c.card_ct IS NOT NULL AND NOT EXISTS (
    SELECT 1 FROM card_index i WHERE i.customer_id = c.customer_id AND i.index_version = ANY($1::int[])
) AND NOT EXISTS (
    SELECT 1 FROM card_claims i WHERE i.customer_id = c.customer_id AND i.index_version = ANY($1::int[])
)
"""


async def status(conn: asyncpg.Connection, vault: Vault) -> KeyStatus:
    async def counts(sql: str) -> dict[int, int]:
        return {row[0]: row[1] for row in await conn.fetch(sql)}

    return KeyStatus(
        master_primary=vault.envelope.master.primary,
        wraps_by_master_version=await counts(WRAPS),
        retired_master_versions=[row[0] for row in await conn.fetch(RETIRED)],
        index_primary=vault.index.primary,
        cards_by_index_version=await counts(CARDS),
        subjects_by_index_version=await counts(SUBJECTS),
        ledger_records_by_index_version=await counts(LEDGER),
        customers_not_under_index_primary=await conn.fetchval(
            SUBJECTS_OUTSIDE, [vault.index.primary]
        ),
        cards_not_under_index_primary=await conn.fetchval(CARDS_OUTSIDE, [vault.index.primary]),
        customers_stranded=await conn.fetchval(SUBJECTS_OUTSIDE, list(vault.index.versions)),
    )


IN_USE = "SELECT count(*) FROM customer_keys WHERE master_version = $1"
LABELS_IN_USE = """
SELECT count(*) FROM demand_groups WHERE substring(label_ct FROM 2 FOR 4) = int4send($1)
"""
IS_RETIRED = "SELECT EXISTS (SELECT 1 FROM retired_master_keys WHERE version = $1)"


async def refuse_a_retired_primary(conn: asyncpg.Connection, vault: Vault) -> None:
    """Conflict when the primary master key is a retired version: it would wrap new data keys
    under a key that retiring promised to leave unused (the database refuses them too)."""
    try:
        retired = await conn.fetchval(IS_RETIRED, vault.envelope.master.primary)
    except asyncpg.UndefinedTableError:
        return  # not migrated yet: readiness says so, and nothing can be written
    if retired:
        raise Conflict(
            f"PREFS_MASTER_KEYS: the primary version {vault.envelope.master.primary} is retired; "
            "put a live master key first."
        )


RETIRE = "INSERT INTO retired_master_keys (version) VALUES ($1) ON CONFLICT DO NOTHING"


async def retire(conn: asyncpg.Connection, vault: Vault, version: int) -> None:
    """Record a master-key version as retired; refused while anything is still wrapped under it."""
    if version == vault.envelope.master.primary:
        raise Conflict(
            f"Version {version} is the primary master key; make another key primary first."
        )
    wraps = await conn.fetchval(IN_USE, version)
    labels = await conn.fetchval(LABELS_IN_USE, version)
    if wraps or labels:
        raise Conflict(
            f"Version {version} still wraps {wraps} data keys and {labels} demand labels: "
            "run `prefs keys rotate` first."
        )
    await conn.execute(RETIRE, version)


CARDS_TO_INDEX = """
SELECT c.customer_id FROM customers c
WHERE c.card_ct IS NOT NULL AND c.customer_id > $1 ORDER BY c.customer_id LIMIT $2
"""
# Held until the batch commits: an erasure (FOR UPDATE) waits for it, or it waits for the erasure
# and then finds nobody, so no blind index outlives an erased customer.
# A card confirmed at a till is indexed (card_index); one not yet confirmed stays a claim.
CARD_OF = """
SELECT card_ct, EXISTS (SELECT 1 FROM card_index i WHERE i.customer_id = c.customer_id) AS proven
FROM customers c WHERE customer_id = $1 AND card_ct IS NOT NULL FOR SHARE
"""
ADD_CARD = """
INSERT INTO card_index (card_hash, index_version, customer_id) VALUES ($1, $2, $3)
ON CONFLICT (card_hash) DO NOTHING
"""
ADD_CLAIM = """
INSERT INTO card_claims (card_hash, index_version, customer_id) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
"""
# Only where the same customer's card is indexed under a configured version too: a card set
# meanwhile by a process that knows only an old key stays findable until the next reindex.
DROP_OLD_CARDS = """
WITH claims AS (
    DELETE FROM card_claims old WHERE NOT (old.index_version = ANY($1::int[])) AND EXISTS (
        SELECT 1 FROM card_claims i
        WHERE i.customer_id = old.customer_id AND i.index_version = ANY($1::int[])
    )
)
DELETE FROM card_index old WHERE NOT (old.index_version = ANY($1::int[])) AND EXISTS (
    SELECT 1 FROM card_index i WHERE i.customer_id = old.customer_id AND i.index_version = ANY($1::int[])
)
"""
INSIGHTS_GRANTS = "SELECT customer_id FROM consents WHERE audience = 'insights'"


async def reindex(
    conn: asyncpg.Connection,
    vault: Vault,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """After a new index key: write card blind indexes under every configured index version
    (lookups try them all, so cards keep working throughout), then drop versions no longer
    configured, index each preference's SKU under the primary key, and recount demand under it.
    Returns how many cards were indexed.

    Subjects are not covered: only their hashes are stored, so each customer gains a hash under
    every configured version when they next sign in (see ``retire_index``).
    """
    from prefs.customer_keys import data_key, lock_customer

    done, after = 0, uuid.UUID(int=0)
    while True:
        rows = await conn.fetch(CARDS_TO_INDEX, after, batch_size)
        if not rows:
            break
        async with conn.transaction():
            for row in rows:
                held = await conn.fetchrow(CARD_OF, row["customer_id"])
                if held is None:  # erased, or the card removed, meanwhile
                    continue
                key = await data_key(conn, vault, row["customer_id"])
                card = key.decrypt(held["card_ct"], "customers", "card", row["customer_id"])
                for version in vault.index.versions:
                    await conn.execute(
                        ADD_CARD if held["proven"] else ADD_CLAIM,
                        vault.index.card(card.decode(), version),
                        version,
                        row["customer_id"],
                    )
        done += len(rows)
        after = rows[-1]["customer_id"]
        if progress is not None:
            progress(done)
    await conn.execute(DROP_OLD_CARDS, vault.index.versions)
    async for _ in preferences.index_sku_backlog(conn, vault):
        pass  # each preference's SKU indexed under the primary (an import looks under each key)
    for row in await conn.fetch(INSIGHTS_GRANTS):
        async with conn.transaction():  # as every recount: under the customer's lock
            if await lock_customer(conn, row["customer_id"]):
                await insights.refresh(conn, vault, row["customer_id"])
    async with conn.transaction():
        await insights.drop_unused_groups(conn)
    return done


LIVE_CODES = "SELECT count(*) FROM checkout_codes WHERE index_version = $1 AND expires_at > now()"
DEMAND_UNDER = "SELECT count(*) FROM demand_contributions WHERE pseudonym = ANY($1::bytea[])"
LEDGER_UNDER = "SELECT count(*) FROM consent_ledger WHERE mac_version = $1"
SKUS_UNDER = "SELECT count(*) FROM preferences WHERE substring(sku_index FOR 4) = int4send($1)"


def _counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


async def retire_index(conn: asyncpg.Connection, vault: Vault, version: int) -> int:
    """Check that an index-key version can leave ``PREFS_INDEX_KEY``: refused while anything is
    still found only under it. Returns how many consent-ledger records were sealed under it
    (they keep that version and can be verified only with that key).

    Nothing is written: the version stays in the keyring until the operator removes it, and
    until then every enrolment, sign-in and card change keeps writing under it too.
    """
    if version == vault.index.primary:
        raise Conflict(
            f"Version {version} is the primary index key; make another key primary first."
        )
    if version not in vault.index.versions:
        raise Conflict(
            f"Version {version} is not in PREFS_INDEX_KEY: keep it there until it is retired."
        )
    remaining = [v for v in vault.index.versions if v != version]
    subjects = await conn.fetchval(SUBJECTS_OUTSIDE, remaining)
    cards = await conn.fetchval(CARDS_OUTSIDE, remaining)
    codes = await conn.fetchval(LIVE_CODES, version)
    pseudonyms = [
        vault.index.digest("demand", row["customer_id"].bytes, version)
        for row in await conn.fetch(INSIGHTS_GRANTS)
    ]
    demand = await conn.fetchval(DEMAND_UNDER, pseudonyms) if pseudonyms else 0
    skus = await conn.fetchval(SKUS_UNDER, version)
    reasons = []
    if subjects:
        reasons.append(
            _counted(subjects, "customer", "customers")
            + " can be found only under it (each moves over when they next sign in)"
        )
    if cards:
        reasons.append(
            _counted(cards, "card is", "cards are")
            + " indexed only under it (run `prefs keys reindex`)"
        )
    if codes:
        reasons.append(
            _counted(codes, "checkout code", "checkout codes")
            + " in force were made under it (they expire within minutes)"
        )
    if demand:
        reasons.append(
            _counted(demand, "demand contribution is", "demand contributions are")
            + " counted under it (run `prefs keys reindex`)"
        )
    if skus:
        reasons.append(
            _counted(skus, "preference's SKU is", "preferences' SKUs are")
            + " indexed under it (run `prefs keys reindex`)"
        )
    if reasons:
        raise Conflict(f"Version {version} is still needed: " + "; ".join(reasons) + ".")
    ledger_records: int = await conn.fetchval(LEDGER_UNDER, version)
    return ledger_records
