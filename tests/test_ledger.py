"""The consent ledger: one hash-chained record per change; any alteration is found and named."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from prefs import db
from prefs.consents import ledger
from prefs.consents import service as consents
from prefs.consents.schemas import ConsentGrant
from prefs.customers import service as customers
from tests.support.customer import grant, withdraw
from tests.support.database import admin, with_database
from tests.support.rights import new_key, own_database
from tests.support.rights import run_prefs as own_run_prefs

PREFS = Path(sys.executable).parent / "prefs"


async def three_changes(client: Any, new_customer: Any) -> Any:
    """A customer whose chain has three records: pos given, insights given, pos withdrawn."""
    customer = await new_customer()
    await grant(client, customer, "pos", fields=["product"])
    await grant(client, customer, "insights", fields=["product", "attributes"])
    await withdraw(client, customer, "pos")
    return customer


@asynccontextmanager
async def tampering(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction in which the append-only trigger does not fire (as an intruder with
    superuser rights could arrange)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        yield


async def faults_by_customer(conn: asyncpg.Connection, vault: Any) -> dict[str, ledger.ChainFault]:
    verification = await ledger.verify_all(conn, vault.index)
    return {str(fault.customer_id): fault for fault in verification.faults}


async def test_every_consent_change_appends_one_linked_record(client, conn, new_customer, vault):
    customer = await new_customer()

    given = await grant(client, customer, "pos", fields=["product"])
    changed = await grant(client, customer, "pos", fields=["product", "note"])
    withdrawn = await withdraw(client, customer, "pos")

    history = (await client.get("/v1/me/consents/history", headers=customer.headers)).json()
    entries = history["items"]
    assert [e["seq"] for e in entries] == [3, 2, 1]
    assert [e["receipt"]["state"] for e in entries] == [
        "ConsentWithdrawn",
        "ConsentGiven",
        "ConsentGiven",
    ]
    assert [e["receipt"] for e in reversed(entries)] == [
        given["receipt"],
        changed["receipt"],
        withdrawn["receipt"],
    ]
    assert entries[-1]["prev_hash"] == "00" * 32
    assert entries[1]["prev_hash"] == entries[2]["hash"]
    assert entries[0]["prev_hash"] == entries[1]["hash"]
    assert history["next"] is None
    head = await conn.fetchrow(
        "SELECT ledger_seq, ledger_head FROM customers WHERE customer_id = $1",
        uuid.UUID(customer.id),
    )
    assert head["ledger_seq"] == 3
    assert head["ledger_head"].hex() == entries[0]["hash"]
    assert str(customer.id) not in await faults_by_customer(conn, vault)


async def test_the_history_pages_newest_first(client, new_customer):
    customer = await three_changes(client, new_customer)

    first = (
        await client.get("/v1/me/consents/history", params={"limit": 2}, headers=customer.headers)
    ).json()
    second = (
        await client.get(
            "/v1/me/consents/history",
            params={"limit": 2, "before": first["next"]},
            headers=customer.headers,
        )
    ).json()

    assert [e["seq"] for e in first["items"]] == [3, 2]
    assert [e["seq"] for e in second["items"]] == [1]
    assert second["next"] is None


@pytest.mark.parametrize("before", ["abc", "-1", "1.5", chr(0xFF11)])
async def test_a_bad_history_cursor_is_refused(client, new_customer, before):
    customer = await new_customer()
    response = await client.get(
        "/v1/me/consents/history", params={"before": before}, headers=customer.headers
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_the_ledger_refuses_plain_updates_and_deletes(client, conn, new_customer):
    customer = await three_changes(client, new_customer)
    who = uuid.UUID(customer.id)

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute(
            "UPDATE consent_ledger SET state = 'ConsentGiven' WHERE customer_id = $1", who
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await conn.execute("DELETE FROM consent_ledger WHERE customer_id = $1 AND seq = 3", who)
    assert (
        await conn.fetchval("SELECT count(*) FROM consent_ledger WHERE customer_id = $1", who) == 3
    )


TAMPERS: dict[str, tuple[list[str], int]] = {
    "receipt-altered": (
        [
            "UPDATE consent_ledger SET receipt = jsonb_set(receipt, '{fields}', "
            '\'["product", "attributes", "note"]\') WHERE customer_id = $1 AND seq = 2'
        ],
        2,
    ),
    "receipt-state-altered": (
        [
            "UPDATE consent_ledger SET receipt = jsonb_set(receipt, '{state}', '\"ConsentGiven\"') "
            "WHERE customer_id = $1 AND seq = 3"
        ],
        3,
    ),
    "state-column-altered": (
        ["UPDATE consent_ledger SET state = 'ConsentGiven' WHERE customer_id = $1 AND seq = 3"],
        3,
    ),
    "middle-deleted": (["DELETE FROM consent_ledger WHERE customer_id = $1 AND seq = 2"], 2),
    "first-deleted": (["DELETE FROM consent_ledger WHERE customer_id = $1 AND seq = 1"], 1),
    "last-deleted": (["DELETE FROM consent_ledger WHERE customer_id = $1 AND seq = 3"], 3),
    "first-two-swapped": (
        [
            "UPDATE consent_ledger SET seq = 1003 - seq WHERE customer_id = $1 AND seq IN (1, 2)",
            "UPDATE consent_ledger SET seq = seq - 1000 WHERE customer_id = $1 AND seq > 1000",
        ],
        1,
    ),
    "last-two-swapped": (
        [
            "UPDATE consent_ledger SET seq = 1005 - seq WHERE customer_id = $1 AND seq IN (2, 3)",
            "UPDATE consent_ledger SET seq = seq - 1000 WHERE customer_id = $1 AND seq > 1000",
        ],
        2,
    ),
}


@pytest.mark.parametrize("tamper", list(TAMPERS))
async def test_an_altered_chain_is_detected_and_names_its_customer(
    client, conn, new_customer, vault, tamper
):
    victim = await three_changes(client, new_customer)
    bystander = await three_changes(client, new_customer)
    assert victim.id not in await faults_by_customer(conn, vault)
    statements, at_seq = TAMPERS[tamper]

    async with tampering(conn):
        for sql in statements:
            changed = await conn.execute(sql, uuid.UUID(victim.id))
            assert changed.split()[-1] != "0"

    faults = await faults_by_customer(conn, vault)
    assert victim.id in faults
    assert faults[victim.id].seq == at_seq
    assert bystander.id not in faults


async def run_prefs(*args: str, database_url: str, data_dir: Path) -> tuple[int, str]:
    """Run `prefs` against a database with the test keys; returns (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFS_")}
    env.update(
        PREFS_DATABASE_URL=database_url, PREFS_DATA_DIR=str(data_dir), PREFS_LOG_LEVEL="WARNING"
    )
    process = await asyncio.create_subprocess_exec(
        str(PREFS), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.fixture(scope="module")
def ledger_database(database: Any) -> Iterator[str]:
    """A database of its own, so that `prefs consent verify` can also be seen to pass."""
    name = f"prefs_ledger_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(admin(database.server_url, f"CREATE DATABASE {name}"))
    url = with_database(database.server_url, name)
    db.migrate(url)
    yield url
    asyncio.run(admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def enrol_with_changes(conn: asyncpg.Connection, vault: Any, settings: Any) -> uuid.UUID:
    """Through the service functions the HTTP layer calls: enrol, grant, change, withdraw."""
    subject = vault.index.subjects("prefs-test", f"ledger-{uuid.uuid4()}")
    profile, _ = await customers.enrol(conn, vault, subject, None)
    for fields in (["product"], ["product", "attributes"]):
        await consents.grant(
            conn, vault, settings.controller, profile.id, "pos", ConsentGrant(fields=fields)
        )  # type: ignore[arg-type]
    await consents.withdraw(conn, vault, settings.controller, profile.id, "pos")
    return profile.id


async def test_prefs_consent_verify_passes_intact_chains_and_names_an_altered_one(
    ledger_database, vault, settings
):
    conn = await db.connect(ledger_database)
    try:
        victim = await enrol_with_changes(conn, vault, settings)
        bystander = await enrol_with_changes(conn, vault, settings)

        code, intact = await run_prefs(
            "consent", "verify", database_url=ledger_database, data_dir=settings.data_dir
        )
        assert code == 0, intact
        assert "2 chains checked, 0 altered" in intact
        assert "ALTERED" not in intact

        async with tampering(conn):
            await conn.execute(
                "UPDATE consent_ledger SET receipt = jsonb_set(receipt, '{fields}', '[\"note\"]') "
                "WHERE customer_id = $1 AND seq = 1",
                victim,
            )
        code, altered = await run_prefs(
            "consent", "verify", database_url=ledger_database, data_dir=settings.data_dir
        )
    finally:
        await conn.close()

    assert code == 1, altered
    assert f"ALTERED customer {victim} at record 1" in altered
    assert str(bystander) not in altered
    assert "2 chains checked, 1 altered" in altered


async def test_prefs_consent_verify_names_an_altered_chain_in_the_service_database(
    client, conn, new_customer, database, settings
):
    victim = await three_changes(client, new_customer)
    bystander = await three_changes(client, new_customer)
    async with tampering(conn):
        await conn.execute(
            "DELETE FROM consent_ledger WHERE customer_id = $1 AND seq = 2", uuid.UUID(victim.id)
        )

    code, output = await run_prefs(
        "consent", "verify", database_url=database.url, data_dir=settings.data_dir
    )

    assert code == 1, output
    assert f"ALTERED customer {victim.id} at record 2" in output
    assert bystander.id not in output


async def test_prefs_consent_verify_tells_records_under_a_removed_index_key_from_altered_ones(
    database: Any, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "ledger_keys") as own:
        old = own.index_keys
        both = f"{new_key(2)},{old}"
        only_new = both.split(",")[0]
        conn = await own.connect()
        try:
            before = own.vault(index_keys=old)
            who = (await customers.enrol(conn, before, before.index.subjects("t", "a"), None))[0].id
            for fields in (["product"], ["product", "note"]):
                await consents.grant(conn, before, "prefs", who, "pos", ConsentGrant(fields=fields))  # type: ignore[arg-type]
            after = own.vault(index_keys=both)
            await consents.withdraw(conn, after, "prefs", who, "pos")  # sealed under v2

            async def verify(index_keys: str) -> tuple[int, str]:
                return await own_run_prefs(
                    "consent",
                    "verify",
                    database_url=own.url,
                    data_dir=own.data_dir,
                    master_keys=own.master_keys,
                    index_keys=index_keys,
                )

            code, output = await verify(both)
            assert code == 0, output
            assert "1 chains checked, 0 altered" in output

            code, output = await verify(only_new)
            assert code == 2, output
            assert "ALTERED" not in output
            assert "1 chains checked, 0 altered" in output
            assert "2 records sealed under index key v1" in output
            assert "cannot be verified" in output

            # a record claiming a key newer than any configured is not passed off as retired
            async with tampering(conn):
                await conn.execute(
                    "UPDATE consent_ledger SET mac_version = 9 WHERE customer_id = $1 AND seq = 3",
                    who,
                )
            code, output = await verify(only_new)
            assert code == 1, output
            assert f"ALTERED customer {who} at record 3" in output
        finally:
            await conn.close()
