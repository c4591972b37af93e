"""The customer's data key, and the lock that makes a customer's changes take turns."""

from __future__ import annotations

import uuid

import asyncpg

from prefs.crypto import DataKey, Vault
from prefs.errors import NotEnrolled

DATA_KEY = "SELECT generation, master_version, wrapped FROM customer_keys WHERE customer_id = $1"
REWRAP = """
UPDATE customer_keys SET wrapped = $3, master_version = $4, rewrapped_at = now()
WHERE customer_id = $1 AND wrapped = $2
"""


async def data_key(conn: asyncpg.Connection, vault: Vault, customer_id: uuid.UUID) -> DataKey:
    """The customer's unwrapped data key; a wrap under an older master key is rewrapped on the way.

    Only forward: during a rolling deploy a process whose primary is older than the wrap's
    version (it knows the new key, but not yet as primary) leaves the wrap as it is.
    """
    row = await conn.fetchrow(DATA_KEY, customer_id)
    if row is None:
        raise NotEnrolled("Enrol first with POST /v1/me.")
    key = vault.envelope.unwrap(customer_id, row["generation"], row["wrapped"])
    primary = vault.envelope.master.primary
    if row["master_version"] < primary:
        rewrapped = vault.envelope.rewrap(customer_id, row["generation"], row["wrapped"])
        await conn.execute(REWRAP, customer_id, row["wrapped"], rewrapped, primary)
    return key


# The customer row is the lock every change to one customer's locker or consents takes first
# (preferences, grants, expiry): one lock order for all of them, so they cannot deadlock.
LOCK = "SELECT 1 FROM customers WHERE customer_id = $1 FOR UPDATE"


async def lock_customer(conn: asyncpg.Connection, customer_id: uuid.UUID) -> bool:
    """Hold the customer until the transaction ends; False when there is no such customer."""
    return await conn.fetchval(LOCK, customer_id) is not None
