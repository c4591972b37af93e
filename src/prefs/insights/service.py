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


FORGET = "DELETE FROM demand_contributions WHERE pseudonym = ANY($1::bytea[])"
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
    for row in rows:
        pid = row["preference_id"]
        size: dict[str, str] = {}
        if "attributes" in grant["fields"]:
            attributes = decrypt_attributes(key, pid, row["attributes_ct"])
            size = {k: v for k, v in sorted(attributes.items()) if k in SIZE_KEYS}
        label = msgspec.json.encode(
            _Label(decrypt_product(key, pid, row["product_ct"]), size), order="sorted"
        )
        group = index.digest("demand-group", label)
        await conn.execute(ADD_GROUP, group, vault.demand_labels.encrypt(label, group))
        await conn.execute(CONTRIBUTE, pseudonym, group)


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
