"""Retention: what expires is purged, by `prefs purge` and periodically by the service.

Three jobs: expiry (grants past their end are recorded as expired and ended, with what follows
from that in prefs.consequences) runs every PREFS_EXPIRY_INTERVAL; the purge of expired rows
every PREFS_PURGE_INTERVAL. Reads never expire anything: every read skips grants past their end
by the grant-in-force predicate (prefs.grants.IN_FORCE). And every PREFS_EXPIRY_INTERVAL the
service follows the catalogue's status moves that imports recorded (`prefs catalogue import`
holds no keys, so cannot recount the customers keeping those SKUs itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import asyncpg

from prefs.consents.schemas import Controller
from prefs.consents.service import expire_due
from prefs.crypto import Vault
from prefs.errors import DATABASE_DOWN
from prefs.idempotency import purge_expired as purge_idempotency
from prefs.insights.service import drop_unused_groups, purge_old_releases, recount_keepers
from prefs.throttle import ENDED_KEY_WINDOWS, ENDED_STORE_WINDOWS

log = logging.getLogger("prefs.retention")

LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('prefs.purge'))"
CODES = "DELETE FROM checkout_codes WHERE expires_at <= now()"
ACCESS_LOG = "DELETE FROM access_log WHERE at < now() - make_interval(days => $1)"
# What erasure left of an erased customer's reorders (closed, without their snapshot, so the
# partner or store saw them end) goes once they have had ERASED_REORDERS_DAYS to read it.
ERASED_REORDERS_DAYS = 30
ERASED_REORDERS = """
DELETE FROM reorders r
WHERE r.snapshot_ct IS NULL AND r.state = 'cancelled'
  AND r.updated_at < now() - make_interval(days => $1)
  AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = r.customer_id)
"""


def _count(status: str) -> int:
    return int(status.split()[-1])


async def purge(
    conn: asyncpg.Connection, vault: Vault, controller: str | Controller, access_log_days: int
) -> dict[str, int] | None:
    """Purge expired checkout codes, idempotency records, access-log entries older than the
    retention period, what erasures left of reorders once partners and stores had time to see
    them end, and ended miss-throttle windows, and record expired consents. None when
    another purge is running."""
    async with conn.transaction():
        if not await conn.fetchval(LOCK):
            return None
        return {
            "consents_expired": await expire_due(conn, vault, controller),
            "checkout_codes": _count(await conn.execute(CODES)),
            "idempotency_keys": await purge_idempotency(conn),
            "access_log": _count(await conn.execute(ACCESS_LOG, access_log_days)),
            "erased_reorders": _count(await conn.execute(ERASED_REORDERS, ERASED_REORDERS_DAYS)),
            "demand_groups": await drop_unused_groups(conn),
            "demand_releases": await purge_old_releases(conn),
            "lookup_miss_windows": _count(await conn.execute(ENDED_KEY_WINDOWS))
            + _count(await conn.execute(ENDED_STORE_WINDOWS)),
        }


async def expire(conn: asyncpg.Connection, vault: Vault, controller: str | Controller) -> int:
    """End every grant past its end (ledger receipt, consequences); returns how many."""
    return await expire_due(conn, vault, controller)


# One recount at a time across all workers and instances. The lock is a transaction's, held on a
# connection of its own while the recount runs in transactions of its own on another: a
# session's lock would not survive a pooler in transaction mode. Two recounts at once would
# still count right (recount_keepers), only doing the work twice.
RECOUNT_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext('prefs.recount'))"
MOVES_WAITING = "SELECT count(*) FROM catalogue_moves"


async def recount_moved(pool: Any, vault: Vault) -> tuple[int, int] | None:
    """Follow the catalogue's status moves waiting: recount the demand of the customers with an
    `insights` grant keeping one of those SKUs. Returns (moves waiting, customers recounted):
    (0, 0) after one query when none wait; None when another worker is recounting."""
    async with pool.acquire() as conn:
        waiting: int = await conn.fetchval(MOVES_WAITING)
        if not waiting:
            return 0, 0
        async with pool.acquire() as holder, holder.transaction():
            if not await holder.fetchval(RECOUNT_LOCK):
                return None
            return waiting, await recount_keepers(conn, vault)


async def _purge_or_expire(
    pool: Any, vault: Vault, controller: str | Controller, access_log_days: int, purging: bool
) -> None:
    async with pool.acquire() as conn:
        if purging:
            purged = await purge(conn, vault, controller, access_log_days)
        else:
            purged = {"consents_expired": await expire(conn, vault, controller)}
    if purged and any(purged.values()):
        log.info("purged %s", purged)


async def _recount(pool: Any, vault: Vault) -> None:
    followed = await recount_moved(pool, vault)
    if followed and followed[0]:
        log.info("demand follows the catalogue: %d status moves, %d customers recounted", *followed)


async def _attempt(job: str, retry_in: float, work: Awaitable[None]) -> None:
    """Run one job; a failure is logged (the exception's type and its frames, never its message,
    which may quote a value), to be tried again next time."""
    try:
        await work
    except DATABASE_DOWN as error:
        log.warning("%s skipped: database unavailable (%s)", job, type(error).__name__)
    except Exception as error:
        log.error(
            "%s failed: %s; trying again in %s s",
            job,
            type(error).__name__,
            retry_in,
            exc_info=error,
        )


async def run_periodically(
    pool: Any,
    vault: Vault,
    controller: str | Controller,
    access_log_days: int,
    interval: float,
    expiry_interval: float | None = None,
) -> None:
    """The service's own loop: each tick (the expiry interval) it ends expired grants, or
    purges once the purge interval has passed, then recounts the demand the catalogue's status
    moves changed (one purge, and one recount, at a time across all workers).

    Each job that fails is logged and tried again next time, without holding up the other: the
    loop ends only when cancelled.
    """
    tick = min(interval, expiry_interval or interval)
    since_purge = 0.0
    while True:
        await asyncio.sleep(tick)
        since_purge += tick
        purging = since_purge >= interval
        if purging:
            since_purge = 0.0
        await _attempt(
            "purge", interval, _purge_or_expire(pool, vault, controller, access_log_days, purging)
        )
        await _attempt("demand recount", tick, _recount(pool, vault))
