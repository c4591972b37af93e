"""Retention: expired checkout codes and idempotency records, and access-log entries past the
retention period, are purged — by `prefs purge` and by the service on its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from prefs import db, idempotency
from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.crypto import Vault
from prefs.retention import service as retention
from prefs.settings import Settings, load
from tests.support.customer import grant, keep
from tests.support.database import Database
from tests.support.rights import (
    Shopper,
    enrol,
    fresh_card,
    items,
    look_up,
    own_database,
    preference,
    run_prefs,
    till,
)
from tests.support.servers import LiveServer
from tests.support.stores import FROM_HIGH_STREET

ACCESS_LOG_DEFAULT_DAYS = 400


async def purge(
    conn: asyncpg.Connection, vault: Vault, settings: Settings, days: int | None = None
) -> dict[str, int]:
    """One purge as the service runs it (waiting out a purge another process is running)."""
    for _ in range(50):
        purged = await retention.purge(
            conn, vault, settings.controller, days or settings.access_log_retention_days
        )
        if purged is not None:
            return purged
        await asyncio.sleep(0.1)
    raise AssertionError("another purge never finished")


async def checkout_code(client: httpx.AsyncClient, shopper: Shopper) -> str:
    response = await client.post(
        "/v1/me/checkout-codes", headers=shopper.headers, json={"fields": ["product"]}
    )
    assert response.status_code == 201, response.text
    code: str = response.json()["code"]
    return code


async def reorder_with_key(
    client: httpx.AsyncClient, shopper: Shopper, preference_id: str, key: str
) -> httpx.Response:
    return await client.post(
        f"/v1/me/preferences/{preference_id}/reorders",
        headers={**shopper.headers, "Idempotency-Key": key},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )


class Leftovers:
    """A customer's expired code and idempotency record beside ones still in force."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault

    async def make(
        self, client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer
    ) -> None:
        self.shopper = await enrol(client, issuer)
        self.preference = (await keep(client, self.shopper, preference("retention")))["id"]
        self.expired_code, self.live_code = (
            await checkout_code(client, self.shopper),
            await checkout_code(client, self.shopper),
        )
        self.expired_key, self.live_key = str(uuid.uuid4()), str(uuid.uuid4())
        for key in (self.expired_key, self.live_key):
            assert (
                await reorder_with_key(client, self.shopper, self.preference, key)
            ).status_code == 201
        await conn.execute(
            "UPDATE checkout_codes SET expires_at = now() - interval '1 second' "
            "WHERE code_hash = $1",
            self.vault.index.checkout_code(self.expired_code),
        )
        await conn.execute(
            "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
            "WHERE owner = $1 AND key = $2",
            f"customer:{self.shopper.id}",
            self.stored(self.expired_key),
        )

    def stored(self, key: str) -> str:
        """An Idempotency-Key as the table holds it (a keyed hash)."""
        owner = f"customer:{self.shopper.id}"
        return idempotency.stored_keys(self.vault.index, owner, key)[self.vault.index.primary]

    async def codes(self, conn: asyncpg.Connection) -> dict[str, bool]:
        return {
            name: bool(
                await conn.fetchval(
                    "SELECT count(*) FROM checkout_codes WHERE code_hash = $1",
                    self.vault.index.checkout_code(code),
                )
            )
            for name, code in (("expired", self.expired_code), ("live", self.live_code))
        }

    async def idempotency(self, conn: asyncpg.Connection) -> dict[str, bool]:
        return {
            name: bool(
                await conn.fetchval(
                    "SELECT count(*) FROM idempotency_keys WHERE owner = $1 AND key = $2",
                    f"customer:{self.shopper.id}",
                    self.stored(key),
                )
            )
            for name, key in (("expired", self.expired_key), ("live", self.live_key))
        }


async def test_expired_checkout_codes_and_idempotency_records_are_purged(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
) -> None:
    left = Leftovers(vault)
    await left.make(client, conn, issuer)
    assert await left.codes(conn) == {"expired": True, "live": True}
    assert await left.idempotency(conn) == {"expired": True, "live": True}

    purged = await purge(conn, vault, settings)

    assert purged["checkout_codes"] >= 1
    assert purged["idempotency_keys"] >= 1
    assert await left.codes(conn) == {"expired": False, "live": True}
    assert await left.idempotency(conn) == {"expired": False, "live": True}
    # what is still in force keeps working: the code at the till, the key as a replay
    _, till_key = await till(conn)
    assert (await look_up(client, till_key, code=left.live_code)).status_code == 200
    replay = await reorder_with_key(client, left.shopper, left.preference, left.live_key)
    assert (replay.status_code, replay.headers.get("idempotent-replayed")) == (201, "true")
    forgotten = await reorder_with_key(client, left.shopper, left.preference, left.expired_key)
    assert (forgotten.status_code, forgotten.headers.get("idempotent-replayed")) == (201, None)
    assert len(await items(client, left.shopper, "/v1/me/reorders")) == 3


async def disclosed_customer(
    client: httpx.AsyncClient, conn: asyncpg.Connection, issuer: DevIssuer, lookups: int
) -> tuple[Shopper, list[uuid.UUID]]:
    """A customer a till looked up ``lookups`` times, and their access-log entries, oldest first."""
    card = fresh_card()
    _, till_key = await till(conn)
    shopper = await enrol(client, issuer, card=card, till=till_key)
    await keep(client, shopper, preference("logged"))
    await grant(client, shopper, "pos")
    for _ in range(lookups):
        assert (await look_up(client, till_key, card=card)).status_code == 200
    rows = await conn.fetch(
        "SELECT disclosure_id FROM access_log WHERE customer_id = $1 ORDER BY at",
        uuid.UUID(shopper.id),
    )
    assert len(rows) == lookups
    return shopper, [row["disclosure_id"] for row in rows]


async def age(
    conn: asyncpg.Connection, shopper: Shopper, disclosure_id: uuid.UUID, days: int
) -> None:
    await conn.execute(
        "UPDATE access_log SET at = now() - make_interval(days => $3) "
        "WHERE customer_id = $1 AND disclosure_id = $2",
        uuid.UUID(shopper.id),
        disclosure_id,
        days,
    )


async def test_access_log_entries_older_than_the_retention_period_are_purged_and_newer_kept(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
) -> None:
    assert settings.access_log_retention_days == ACCESS_LOG_DEFAULT_DAYS
    shopper, (too_old, nearly_old, fresh) = await disclosed_customer(client, conn, issuer, 3)
    await age(conn, shopper, too_old, ACCESS_LOG_DEFAULT_DAYS + 1)
    await age(conn, shopper, nearly_old, ACCESS_LOG_DEFAULT_DAYS - 1)

    purged = await purge(conn, vault, settings)

    assert purged["access_log"] >= 1
    shown = {entry["id"] for entry in await items(client, shopper, "/v1/me/access-log")}
    assert shown == {str(nearly_old), str(fresh)}


async def test_prefs_purge_applies_the_configured_access_log_retention(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
    database: Database,
) -> None:
    left = Leftovers(vault)
    await left.make(client, conn, issuer)
    shopper, (month_old, fresh) = await disclosed_customer(client, conn, issuer, 2)
    await age(conn, shopper, month_old, 31)

    code, output = await run_prefs(
        "purge",
        database_url=database.url,
        data_dir=settings.data_dir,
        master_keys=settings.master_keys,
        index_keys=settings.index_keys,
        PREFS_ACCESS_LOG_RETENTION_DAYS="30",
    )

    assert code == 0, output
    counts = dict(part.split(": ") for part in output.strip().splitlines()[-1].split(", "))
    assert int(counts["checkout_codes"]) >= 1
    assert int(counts["idempotency_keys"]) >= 1
    assert int(counts["access_log"]) >= 1
    assert await left.codes(conn) == {"expired": False, "live": True}
    assert await left.idempotency(conn) == {"expired": False, "live": True}
    shown = {entry["id"] for entry in await items(client, shopper, "/v1/me/access-log")}
    assert shown == {str(fresh)}


async def test_purge_records_expired_consents_in_the_ledger(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
) -> None:
    shopper = await enrol(client, issuer)
    await keep(client, shopper, preference("expiring"))
    await grant(client, shopper, "insights")
    await conn.execute(
        "UPDATE consents SET expires_at = now() - interval '1 second' WHERE customer_id = $1",
        uuid.UUID(shopper.id),
    )

    purged = await purge(conn, vault, settings)

    assert purged["consents_expired"] >= 1
    states = await conn.fetch(
        "SELECT state FROM consent_ledger WHERE customer_id = $1 ORDER BY seq",
        uuid.UUID(shopper.id),
    )
    assert [row["state"] for row in states] == ["ConsentGiven", "ConsentExpired"]


async def test_the_service_purges_on_its_own_schedule(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    issuer: DevIssuer,
    vault: Vault,
    settings: Settings,
    database: Database,
) -> None:
    left = Leftovers(vault)
    await left.make(client, conn, issuer)
    shopper, (too_old, fresh) = await disclosed_customer(client, conn, issuer, 2)
    await age(conn, shopper, too_old, ACCESS_LOG_DEFAULT_DAYS + 1)
    every_five_seconds = load(
        {
            "PREFS_DATA_DIR": str(settings.data_dir),
            **database.app_env,
            "PREFS_PURGE_INTERVAL": "5",
            "PREFS_POOL_MIN_SIZE": "1",
        }
    )
    assert every_five_seconds.purge_interval_seconds == 5

    async def state() -> dict[str, Any]:
        log = await conn.fetch(
            "SELECT disclosure_id FROM access_log WHERE customer_id = $1", uuid.UUID(shopper.id)
        )
        return {
            "codes": await left.codes(conn),
            "idempotency": await left.idempotency(conn),
            "access_log": {row["disclosure_id"] for row in log},
        }

    purged = {
        "codes": {"expired": False, "live": True},
        "idempotency": {"expired": False, "live": True},
        "access_log": {fresh},
    }
    assert await state() != purged
    with LiveServer(create_app(every_five_seconds)):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await state() == purged:
                break
            await asyncio.sleep(0.5)

    assert await state() == purged


class Records(logging.Handler):
    """Every record logged to one logger, kept for looking at."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_periodic_purge_logs_a_failure_and_keeps_running(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "purge_loop") as own:
        conn = await own.connect()
        pool = await db.create_pool(own.url, 1, 2)
        records = Records()
        logger = logging.getLogger("prefs.retention")
        logger.addHandler(records)
        try:
            # an expired grant whose customer row is gone (as a partial restore can leave one):
            # recording its expiry fails, and not with a database error
            stray = uuid.uuid4()
            await conn.execute(
                "INSERT INTO consents (customer_id, audience, fields, receipt_id, expires_at) "
                "VALUES ($1, 'pos', '{product}', $2, now() - interval '1 minute')",
                stray,
                uuid.uuid4(),
            )
            loop = asyncio.create_task(
                retention.run_periodically(pool, own.vault(), "prefs", 400, interval=0.05)
            )
            deadline = time.monotonic() + 20
            while not any(r.levelno >= logging.ERROR for r in records.records):
                assert time.monotonic() < deadline, "the failure was never logged"
                assert not loop.done(), "the purge loop died"
                await asyncio.sleep(0.05)

            await conn.execute("DELETE FROM consents WHERE customer_id = $1", stray)
            await conn.execute(
                "INSERT INTO checkout_codes (code_hash, index_version, customer_id, fields, "
                "expires_at) VALUES ($1, 1, $2, '{product}', now() - interval '1 second')",
                secrets.token_bytes(32),
                uuid.uuid4(),
            )
            while await conn.fetchval("SELECT count(*) FROM checkout_codes"):
                assert time.monotonic() < deadline, "no purge after the failure"
                assert not loop.done(), "the purge loop died"
                await asyncio.sleep(0.05)
            assert not loop.done()
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        finally:
            logger.removeHandler(records)
            await pool.close()
            await conn.close()

    [failure] = [r for r in records.records if r.levelno >= logging.ERROR][:1]
    assert "purge failed" in failure.getMessage()
    assert str(stray) not in failure.getMessage()


async def test_the_purge_drops_ended_till_miss_windows_and_keeps_live_ones(conn, vault, settings):
    ended, live = f"ended-{uuid.uuid4()}", f"live-{uuid.uuid4()}"
    await conn.execute(
        "INSERT INTO store_misses (store, window_start, misses)"
        " VALUES ($1, now() - interval '2 minutes', 7), ($2, now(), 3)",
        ended,
        live,
    )
    await conn.execute(
        "INSERT INTO key_misses (key_hash, window_start, misses)"
        " VALUES ($1, now() - interval '2 minutes', 7), ($2, now(), 3)",
        ended.encode(),
        live.encode(),
    )

    purged = await purge(conn, vault, settings)

    assert purged["lookup_miss_windows"] >= 2
    stores = await conn.fetch(
        "SELECT store, misses FROM store_misses WHERE store = ANY($1::text[])", [ended, live]
    )
    keys = await conn.fetch(
        "SELECT key_hash, misses FROM key_misses WHERE key_hash = ANY($1::bytea[])",
        [ended.encode(), live.encode()],
    )
    assert [(r["store"], r["misses"]) for r in stores] == [(live, 3)]
    assert [(r["key_hash"], r["misses"]) for r in keys] == [(live.encode(), 3)]
