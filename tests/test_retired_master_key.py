"""A retired master-key version wraps nothing new, whoever writes: the database refuses a data
key or a demand label under it, the service refuses to start with it as primary, and
`prefs keys rotate` refuses to rotate onto it."""

from __future__ import annotations

import base64
import os
import uuid

import asyncpg
import pytest

from prefs.app import create_app
from prefs.crypto import Vault
from prefs.customers import service as customers
from prefs.errors import Conflict
from prefs.keys import service as keys
from prefs.settings import Settings, load
from tests.support.database import Database

RETIRED = 777  # a version nothing else in the test session uses


def key_setting(*versions: int) -> str:
    return ",".join(f"{v}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}" for v in versions)


def vault_with_primary(settings: Settings, primary: int) -> Vault:
    return Vault.from_settings(key_setting(primary), settings.index_keys)


async def retire(conn: asyncpg.Connection, version: int) -> None:
    await conn.execute("INSERT INTO retired_master_keys (version) VALUES ($1)", version)


async def test_a_new_data_key_under_a_retired_version_is_refused_by_the_database(conn, settings):
    vault = vault_with_primary(settings, RETIRED)
    customers_before = await conn.fetchval("SELECT count(*) FROM customers")
    tx = conn.transaction()
    await tx.start()
    try:
        await retire(conn, RETIRED)
        with pytest.raises(asyncpg.PostgresError) as refused:
            await customers.enrol(conn, vault, {vault.index.primary: os.urandom(32)}, None)
        assert refused.value.constraint_name == "retired_master_key"
    finally:
        await tx.rollback()
    assert await conn.fetchval("SELECT count(*) FROM customers") == customers_before


async def test_a_rewrap_or_a_demand_label_under_a_retired_version_is_refused(conn, new_customer):
    customer = await new_customer()
    tx = conn.transaction()
    await tx.start()
    try:
        await retire(conn, RETIRED)
        with pytest.raises(asyncpg.PostgresError, match="retired"):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE customer_keys SET master_version = $2 WHERE customer_id = $1",
                    uuid.UUID(customer.id),
                    RETIRED,
                )
        label = bytes([1]) + RETIRED.to_bytes(4, "big") + os.urandom(40)
        with pytest.raises(asyncpg.PostgresError, match="retired"):
            await conn.execute(
                "INSERT INTO demand_groups (group_hash, label_ct) VALUES ($1, $2)",
                os.urandom(32),
                label,
            )
    finally:
        await tx.rollback()


async def test_the_service_and_rotation_refuse_a_retired_primary(
    conn, database: Database, tmp_path
):
    settings = load(
        {
            "PREFS_ENV": "development",
            "PREFS_DATA_DIR": str(tmp_path),
            **database.app_env,
            "PREFS_MASTER_KEYS": key_setting(RETIRED),
        }
    )
    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    await retire(conn, RETIRED)
    try:
        with pytest.raises(Conflict, match="retired"):
            await keys.rotate(conn, vault, 10, lambda n: None)
        app = create_app(settings)
        with pytest.raises(ExceptionGroup) as refused:  # Litestar's start-up task group
            async with app.lifespan():
                pass
        assert refused.group_contains(Conflict, match="primary version 777 is retired")
    finally:
        await conn.execute("DELETE FROM retired_master_keys WHERE version = $1", RETIRED)
