"""The stairway: each migration goes up, down to exactly the schema before it, and up again."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from prefs import db
from tests.support.database import Database, admin, with_database
from tests.support.rights import run_prefs

SCHEMA = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2
    """,
    "functions": """
        SELECT proname, pg_get_function_identity_arguments(oid)
        FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname FROM pg_trigger
        WHERE NOT tgisinternal ORDER BY 1, 2
    """,
    "types": """
        SELECT typname FROM pg_type
        WHERE typnamespace = 'public'::regnamespace AND typtype <> 'c' AND typname NOT LIKE '\\_%'
        ORDER BY 1
    """,
}


async def schema(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the migrations create, apart from alembic's own bookkeeping."""
    conn = await db.connect(url)
    try:
        snapshot = {
            name: [tuple(row) for row in await conn.fetch(sql)] for name, sql in SCHEMA.items()
        }
    finally:
        await conn.close()
    return {
        name: [row for row in rows if "alembic_version" not in row]
        for name, rows in snapshot.items()
    }


async def current_revision(url: str) -> str | None:
    conn = await db.connect(url)
    try:
        return await conn.fetchval(
            "SELECT version_num FROM alembic_version"
            if await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
            else "SELECT NULL"
        )
    finally:
        await conn.close()


def revisions_in_order() -> list[tuple[str, str]]:
    """(revision, the one before it or 'base'), oldest first."""
    scripts = ScriptDirectory(str(db.migrations_dir()))
    walked = list(scripts.walk_revisions())  # newest first
    assert len(scripts.get_heads()) == 1, "the migrations branch: merge them into one head"
    steps = []
    for script in reversed(walked):
        down = script.down_revision
        assert down is None or isinstance(down, str), f"{script.revision} merges revisions"
        steps.append((script.revision, down or "base"))
    return steps


@pytest.fixture
async def empty_database(database: Database) -> AsyncIterator[str]:
    name = f"prefs_stairway_{secrets.token_hex(4)}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    try:
        yield with_database(database.server_url, name)
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_revisions_form_one_line_from_base_to_head():
    steps = revisions_in_order()
    assert steps[0][1] == "base"
    assert steps[-1][0] == db.head_revision()
    for (_, before), (previous, _) in zip(steps[1:], steps[:-1], strict=True):
        assert before == previous


async def test_every_revision_goes_up_down_and_up_again(empty_database):
    url = empty_database
    empty = await schema(url)
    before = empty
    for revision, previous in revisions_in_order():
        await asyncio.to_thread(db.migrate, url, revision)
        after = await schema(url)
        assert await current_revision(url) == revision
        assert after != before, f"{revision} changes nothing"

        await asyncio.to_thread(db.downgrade, url, previous)
        assert await schema(url) == before, f"downgrading {revision} does not restore {previous}"
        assert await current_revision(url) == (None if previous == "base" else previous)

        await asyncio.to_thread(db.migrate, url, revision)
        assert await schema(url) == after, f"{revision} does not upgrade the same way twice"
        before = after

    assert await current_revision(url) == db.head_revision()
    await asyncio.to_thread(db.downgrade, url, "base")
    assert await schema(url) == empty
    await asyncio.to_thread(db.migrate, url)
    assert await current_revision(url) == db.head_revision()
    assert await schema(url) == before


async def test_the_session_database_is_at_head(conn):
    assert await db.schema_state(conn, db.head_revision()) == (db.head_revision(), "head")


LEGACY_REORDER = """
INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, origin, quantity, state,
                      fields)
VALUES (gen_random_uuid(), $1, gen_random_uuid(), 'store', 'customer', 1, $2, '{product}')
"""
ONE_REORDER = """
SELECT fulfiller, store_id, state, queue_xid IS NOT NULL FROM reorders
WHERE reorder_id = $1::text::uuid
"""
TILL_AT = """
INSERT INTO credentials (credential_id, kind, key_hash, display_name, store)
VALUES (gen_random_uuid(), 'pos', $1, 'Till 1', $2)
"""


async def test_reorders_from_a_bare_store_go_to_the_only_store_or_are_cancelled(empty_database):
    """Revision 0014: a waiting reorder that named no store reaches the one store there is; with
    several there is no honest guess, and it is cancelled (the page says it named no store). The
    same holds for those the previous release places during the rollout (a trigger)."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0013")
    conn = await db.connect(url)
    try:
        await conn.execute(TILL_AT, secrets.token_bytes(32), "0421")
        await conn.execute(TILL_AT, secrets.token_bytes(32), "0421")
        waiting, finished = secrets.token_hex(16), secrets.token_hex(16)
        await conn.execute(LEGACY_REORDER, waiting, "requested")
        await conn.execute(LEGACY_REORDER, finished, "cancelled")
        await asyncio.to_thread(db.migrate, url, "0014")
        stores = await conn.fetch("SELECT store_id, name, closed_at FROM stores")
        assert [tuple(r) for r in stores] == [("0421", "Store 0421", None)]
        moved = {
            str(r["reorder_id"].hex): tuple(r)[1:]
            for r in await conn.fetch(
                "SELECT reorder_id, fulfiller, store_id, state, queue_xid IS NOT NULL FROM reorders"
            )
        }
        assert moved == {
            waiting: ("store:0421", "0421", "requested", True),  # now in store 0421's queue
            finished: ("store", None, "cancelled", False),
        }
        # the previous release goes on writing bare `store` reorders during the rollout
        during = secrets.token_hex(16)
        await conn.execute(LEGACY_REORDER, during, "requested")
        placed = await conn.fetchrow(ONE_REORDER, during)
        assert tuple(placed) == ("store:0421", "0421", "requested", True)

        await asyncio.to_thread(db.downgrade, url, "0013")
        await conn.execute(TILL_AT, secrets.token_bytes(32), "0422")
        second = secrets.token_hex(16)
        await conn.execute(LEGACY_REORDER, second, "requested")
        await asyncio.to_thread(db.migrate, url, "0014")
        state = await conn.fetchrow(
            "SELECT fulfiller, store_id, state FROM reorders WHERE reorder_id = $1::text::uuid",
            second,
        )
        assert tuple(state) == ("store", None, "cancelled")
        during = secrets.token_hex(16)  # two open stores now: no honest guess
        await conn.execute(LEGACY_REORDER, during, "requested")
        placed = await conn.fetchrow(ONE_REORDER, during)
        assert tuple(placed) == ("store", None, "cancelled", False)
    finally:
        await conn.close()


CUSTOMER = "INSERT INTO customers (customer_id) VALUES ($1)"
PREFERENCE = """
INSERT INTO preferences (customer_id, preference_id, rank, status, purchases_ct, sealed,
                         product_ct, attributes_ct)
VALUES ($1, gen_random_uuid(), $2, 'available', '\\x01', $3, $4, $5)
"""


async def test_0016_adds_sealed_beside_the_fields_and_goes_back_losing_nothing(
    empty_database,
):
    """Revision 0016 is an expand step: rows keep their fields (NOT NULL still), sealed is added
    beside them, the trigger drops a stale whole when only the fields change, and the downgrade
    drops sealed alone (every row still has its fields)."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0016")
    conn = await db.connect(url)
    try:
        customer = uuid.uuid4()
        await conn.execute(CUSTOMER, customer)
        await conn.execute(PREFERENCE, customer, 1, b"sealed", b"product", b"attributes")
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute(PREFERENCE, customer, 2, b"sealed", None, None)
        await conn.execute("UPDATE preferences SET attributes_ct = '\\x02'")  # the old release
        assert await conn.fetchval("SELECT sealed FROM preferences") is None
        await conn.execute("UPDATE preferences SET sealed = '\\x03', attributes_ct = '\\x04'")
        assert await conn.fetchval("SELECT sealed FROM preferences") == b"\x03"

        await asyncio.to_thread(db.downgrade, url, "0015")
        assert await current_revision(url) == "0015"
        assert await conn.fetchval("SELECT attributes_ct FROM preferences") == b"\x04"
    finally:
        await conn.close()


async def test_instances_migrating_at_once_wait_for_each_other(empty_database, settings):
    """Several `prefs serve` starting at once on an old schema each migrate: one runs the
    revisions, the others wait for its commit and find nothing to do (without the lock they
    would run the same revisions twice and fail on what the first created)."""
    url = empty_database  # at base: every revision to run, the widest window for a race
    runs = await asyncio.gather(
        *(
            run_prefs(
                "migrate",
                database_url=url,
                data_dir=settings.data_dir,
                master_keys=settings.master_keys,
                index_keys=settings.index_keys,
            )
            for _ in range(6)
        )
    )
    assert [code for code, _ in runs] == [0] * 6, [output for _, output in runs]
    assert await current_revision(url) == db.head_revision()


CODE = """
INSERT INTO checkout_codes (code_hash, index_version, customer_id, fields, expires_at)
VALUES ($1, 1, $2, '{product}', now() + interval '5 minutes') RETURNING code_id
"""
LISTED = "SELECT code_id, code_hash FROM customer_checkout_codes WHERE customer_id = $1"


async def test_0017_lists_every_code_under_its_customer_whoever_writes_it(empty_database):
    """Revision 0017 lists the codes made before it, and its triggers keep the list in step with
    writes that do not know it (the previous release's, as here): a code inserted is listed under
    its customer, a code deleted is not; the downgrade drops the list and keeps the codes."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "0016")
    conn = await db.connect(url)
    try:
        customer, other = uuid.uuid4(), uuid.uuid4()
        before = await conn.fetchval(CODE, b"before", customer)
        await asyncio.to_thread(db.migrate, url, "0017")
        assert [tuple(r) for r in await conn.fetch(LISTED, customer)] == [(before, b"before")]

        during = await conn.fetchval(CODE, b"during", customer)
        theirs = await conn.fetchval(CODE, b"theirs", other)
        assert {tuple(r) for r in await conn.fetch(LISTED, customer)} == {
            (before, b"before"),
            (during, b"during"),
        }
        assert [tuple(r) for r in await conn.fetch(LISTED, other)] == [(theirs, b"theirs")]
        # ended by the previous release (by customer and id), or by an erasure (every one)
        await conn.execute(
            "DELETE FROM checkout_codes WHERE customer_id = $1 AND code_id = $2", customer, before
        )
        assert [tuple(r) for r in await conn.fetch(LISTED, customer)] == [(during, b"during")]
        await conn.execute("DELETE FROM checkout_codes WHERE customer_id = $1", customer)
        assert await conn.fetch(LISTED, customer) == []
        assert [tuple(r) for r in await conn.fetch(LISTED, other)] == [(theirs, b"theirs")]

        await asyncio.to_thread(db.downgrade, url, "0016")
        assert await current_revision(url) == "0016"
        assert await conn.fetchval("SELECT to_regclass('customer_checkout_codes')") is None
        assert await conn.fetchval("SELECT count(*) FROM checkout_codes") == 1
    finally:
        await conn.close()
