"""Anonymous demand for discontinued products.

Counting data holds no customer id: each opted-in customer contributes under a keyed pseudonym
(so a withdrawal or erasure takes the contribution back at once) to groups whose labels are
encrypted with a service key. Groups smaller than k are never released.
"""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from prefs.crypto import Vault
from prefs.customers.service import data_key
from prefs.insights.schemas import DemandGroup, DiscontinuedDemand
from prefs.preferences.schemas import Product
from prefs.preferences.sealed import decrypt_attributes, decrypt_product

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
GRANT = """
SELECT fields, preference_ids FROM consents
WHERE customer_id = $1 AND audience = 'insights' AND (expires_at IS NULL OR expires_at > now())
"""
DISCONTINUED = """
SELECT preference_id, product_ct, attributes_ct FROM preferences
WHERE customer_id = $1 AND status = 'discontinued'
  AND ($2::uuid[] IS NULL OR preference_id = ANY($2::uuid[]))
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
    """Recount one customer: nothing unless a live `insights` grant covers their discontinued items."""
    index = vault.index
    await conn.execute(FORGET, index.all_digests("demand", customer_id.bytes))
    grant = await conn.fetchrow(GRANT, customer_id)
    if grant is None or "product" not in grant["fields"]:
        return
    rows = await conn.fetch(DISCONTINUED, customer_id, grant["preference_ids"])
    if not rows:
        return
    key = await data_key(conn, vault, customer_id)
    pseudonym = index.digest("demand", customer_id.bytes)
    labels: dict[bytes, bytes] = {}
    for row in rows:
        pid = row["preference_id"]
        size: dict[str, str] = {}
        if "attributes" in grant["fields"]:
            attributes = decrypt_attributes(key, pid, row["attributes_ct"])
            size = {k: v for k, v in sorted(attributes.items()) if k in SIZE_KEYS}
        label = msgspec.json.encode(
            _Label(decrypt_product(key, pid, row["product_ct"]), size), order="sorted"
        )
        labels[index.digest("demand-group", label)] = label
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


RELEASE = """
SELECT g.group_hash, g.label_ct, count(*) AS customers
FROM demand_contributions c JOIN demand_groups g USING (group_hash)
GROUP BY g.group_hash, g.label_ct
HAVING count(*) >= $1
ORDER BY count(*) DESC, g.group_hash
"""


async def discontinued_demand(conn: asyncpg.Connection, vault: Vault, k: int) -> DiscontinuedDemand:
    """Groups of at least k distinct opted-in customers; smaller ones are never released."""
    groups = []
    for row in await conn.fetch(RELEASE, k):
        label = msgspec.json.decode(
            vault.demand_labels.decrypt(row["label_ct"], row["group_hash"]), type=_Label
        )
        groups.append(
            DemandGroup(product=label.product, size=label.size, customers=row["customers"])
        )
    return DiscontinuedDemand(k=k, groups=groups)
