"""Index-key switches, one process configuration at a time: a customer who enrols or signs in
while two index keys are configured can be found under either, so nobody is stranded when the
old key leaves, and the operator is told (and refused) while anybody still depends on it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import httpx

from prefs.customers import service as customers
from prefs.rights import service as rights
from prefs.settings import DEV_ISSUER
from tests.support.customer import grant, keep
from tests.support.database import Database
from tests.support.rights import (
    OwnDatabase,
    Shopper,
    enrol,
    fresh_card,
    look_up,
    new_key,
    own_database,
    preference,
    run_prefs,
    till,
)
from tests.support.servers import serving

SMALL_POOL = {"PREFS_POOL_MIN_SIZE": "1", "PREFS_POOL_MAX_SIZE": "4"}


async def signs_in_as(http: httpx.AsyncClient, shopper: Shopper) -> None:
    """The customer signs in and is recognised as the same customer."""
    response = await http.get("/v1/me", headers=shopper.headers)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == shopper.id


async def subject_versions(own: OwnDatabase, shopper: Shopper) -> set[int]:
    conn = await own.connect()
    try:
        rows = await conn.fetch(
            "SELECT index_version FROM customer_subjects WHERE customer_id = $1",
            uuid.UUID(shopper.id),
        )
    finally:
        await conn.close()
    return {row["index_version"] for row in rows}


async def test_customers_who_enrol_or_sign_in_during_a_switch_are_found_after_it(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "switch") as own:
        old = own.index_keys
        added = f"{old},{new_key(2)}"  # step 1: the new key, not yet primary
        promoted = ",".join(reversed(added.split(",")))  # step 2: the new key primary
        only_new = promoted.split(",")[0]

        async with serving(own.settings(index_keys=old, **SMALL_POOL)) as before:
            earlier = await enrol(before, own.issuer)
        async with serving(own.settings(index_keys=added, **SMALL_POOL)) as during:
            await signs_in_as(during, earlier)
            enrolled_while_added = await enrol(during, own.issuer)
        async with (
            serving(own.settings(index_keys=promoted, **SMALL_POOL)) as upgraded,
            serving(own.settings(index_keys=old, **SMALL_POOL)) as not_yet_restarted,
        ):
            enrolled_while_promoted = await enrol(upgraded, own.issuer)
            # a process of the rolling deploy that still has only the old key knows them too
            await signs_in_as(not_yet_restarted, enrolled_while_promoted)
            # and does not enrol them a second time
            again = await not_yet_restarted.post("/v1/me", headers=enrolled_while_promoted.headers)
            assert again.status_code == 200, again.text
            assert again.json()["id"] == enrolled_while_promoted.id

        for shopper in (earlier, enrolled_while_added, enrolled_while_promoted):
            assert await subject_versions(own, shopper) == {1, 2}
        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as after:
            for shopper in (earlier, enrolled_while_added, enrolled_while_promoted):
                await signs_in_as(after, shopper)


async def test_an_index_key_cannot_be_retired_while_a_customer_is_found_only_under_it(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "retire_index") as own:
        old = own.index_keys
        promoted = f"{new_key(2)},{old}"
        only_new = promoted.split(",")[0]
        conn: asyncpg.Connection = await own.connect()
        try:
            _, till_key = await till(conn)
        finally:
            await conn.close()

        async with serving(own.settings(index_keys=old, **SMALL_POOL)) as before:
            card = fresh_card()
            carded = await enrol(before, own.issuer, card=card, till=till_key)
            kept = await keep(before, carded, preference("retire"))
            await grant(before, carded, "pos")
            quiet = await enrol(before, own.issuer)
            code_response = await before.post(
                "/v1/me/checkout-codes",
                headers=carded.headers,
                json={"fields": ["product"], "ttl_seconds": 900},
            )
            assert code_response.status_code == 201, code_response.text

        async def prefs(*args: str) -> tuple[int, str]:
            return await run_prefs(
                *args,
                database_url=own.url,
                data_dir=own.data_dir,
                master_keys=own.master_keys,
                index_keys=promoted,
            )

        code, output = await prefs("keys", "retire-index", "2")
        assert code != 0
        assert "primary" in output

        code, output = await prefs("keys", "retire-index", "1")
        assert code != 0, output
        assert "1 card" in output
        assert "prefs keys reindex" in output
        assert "2 customers" in output
        assert "1 checkout code" in output
        assert "1 preference's SKU is indexed under it" in output  # an import finds it by that

        code, output = await prefs("keys", "reindex")
        assert code == 0, output
        assert "2 customers can still be found only under older index keys" in output

        code, output = await prefs("keys", "status")
        assert code == 0, output
        assert "2 customers not yet under the primary index key" in output

        conn = await own.connect()
        try:
            await conn.execute("UPDATE checkout_codes SET expires_at = now()")
        finally:
            await conn.close()
        async with serving(own.settings(index_keys=promoted, **SMALL_POOL)) as switching:
            await signs_in_as(switching, carded)
            code, output = await prefs("keys", "retire-index", "1")
            assert code != 0, output
            assert "1 customer " in output
            assert "prefs keys reindex" not in output  # the cards were reindexed
            await signs_in_as(switching, quiet)

        code, output = await prefs("keys", "retire-index", "1")
        assert code == 0, output
        assert "remove it from PREFS_INDEX_KEY" in output
        assert "1 consent ledger record" in output

        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as after:
            await signs_in_as(after, carded)
            await signs_in_as(after, quiet)
            found = await look_up(after, till_key, card=card)
            assert found.status_code == 200, found.text
            assert [p["product"] for p in found.json()["preferences"]] == [kept["product"]]


async def test_a_customer_erased_while_signing_in_during_a_switch_can_enrol_again(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "switch_erase") as own:
        both = f"{own.index_keys},{new_key(2)}"
        vault = own.vault(index_keys=both)
        async with serving(own.settings(**SMALL_POOL)) as before:
            leaving = await enrol(before, own.issuer)  # a hash under version 1 only
        hashes = vault.index.subjects(DEV_ISSUER, leaving.subject)

        eraser, signing_in = await own.connect(), await own.connect()
        try:
            erasure = eraser.transaction()
            await erasure.start()
            assert await rights.erase(eraser, vault, uuid.UUID(leaving.id))
            # the sign-in still sees the customer, and would add their version-2 hash
            sign_in = asyncio.create_task(customers.find_customer_id(signing_in, hashes))
            await waiting_for_a_lock(eraser, signing_in, sign_in)
            await erasure.commit()
            await asyncio.wait_for(sign_in, 30)
            left = await eraser.fetchval(
                "SELECT count(*) FROM customer_subjects WHERE subject_hash = ANY($1::bytea[])",
                list(hashes.values()),
            )
            assert left == 0
        finally:
            await eraser.close()
            await signing_in.close()

        async with serving(own.settings(index_keys=both, **SMALL_POOL)) as after:
            again = await after.post("/v1/me", headers=leaving.headers)
            assert again.status_code == 201, again.text
            assert again.json()["id"] != leaving.id


async def waiting_for_a_lock(
    watcher: asyncpg.Connection, waiter: asyncpg.Connection, task: asyncio.Task[object]
) -> None:
    """Until ``waiter``'s current statement waits for a lock, or ``task`` finished without."""
    pid = waiter.get_server_pid()
    for _ in range(200):
        state = await watcher.fetchrow(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if task.done() or (state is not None and state["wait_event_type"] == "Lock"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sign-in neither finished nor waited for the erasure")


async def test_concurrent_enrolments_with_a_card_during_a_switch_all_succeed(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "switch_enrol") as own:
        async with serving(own.settings(**SMALL_POOL)) as before:
            returning = await enrol(before, own.issuer)  # a hash under version 1 only
        added = f"{own.index_keys},{new_key(2)}"
        async with serving(own.settings(index_keys=added, **SMALL_POOL)) as during:
            answers = await asyncio.gather(
                *(
                    during.post("/v1/me", headers=returning.headers, json={"card": fresh_card()})
                    for _ in range(8)
                )
            )
            assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
            assert {a.json()["id"] for a in answers} == {returning.id}
        assert await subject_versions(own, returning) == {1, 2}


async def accounts(own: OwnDatabase, *ids: str) -> set[str]:
    """Which of these customer ids still exist."""
    conn = await own.connect()
    try:
        rows = await conn.fetch(
            "SELECT customer_id FROM customers WHERE customer_id = ANY($1::uuid[])",
            [uuid.UUID(i) for i in ids],
        )
    finally:
        await conn.close()
    return {str(row["customer_id"]) for row in rows}


async def test_a_customer_who_re_enrolled_while_their_key_was_missing_is_reunited_when_it_returns(
    database: Database, tmp_path: Path
) -> None:
    """The old version removed too early: the customer re-enrols under the new one alone; once
    the old version is configured again, they sign in to their old account, and the empty one
    made meanwhile is gone."""
    async with own_database(database.server_url, tmp_path, "reunite") as own:
        old = own.index_keys
        promoted = f"{new_key(2)},{old}"
        only_new = promoted.split(",")[0]
        async with serving(own.settings(index_keys=old, **SMALL_POOL)) as before:
            shopper = await enrol(before, own.issuer)
            kept = await keep(before, shopper, preference("reunite"))
        # the operator is told that removing the old version stranded someone
        code, output = await run_prefs(
            "keys",
            "status",
            database_url=own.url,
            data_dir=own.data_dir,
            master_keys=own.master_keys,
            index_keys=only_new,
        )
        assert code == 0, output
        assert (
            "1 customer can be found only under index keys missing from PREFS_INDEX_KEY" in output
        )
        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as stranded:
            assert (await stranded.get("/v1/me", headers=shopper.headers)).status_code == 404
            again = await stranded.post("/v1/me", headers=shopper.headers)
            assert again.status_code == 201, again.text
            meanwhile = again.json()["id"]
            assert meanwhile != shopper.id
        async with serving(own.settings(index_keys=promoted, **SMALL_POOL)) as restored:
            await signs_in_as(restored, shopper)
            listed = await restored.get("/v1/me/preferences", headers=shopper.headers)
            assert [p["id"] for p in listed.json()["items"]] == [kept["id"]], listed.text
            enrolled = await restored.post("/v1/me", headers=shopper.headers)
            assert enrolled.status_code == 200, enrolled.text
            assert enrolled.json()["id"] == shopper.id
        assert await accounts(own, shopper.id, meanwhile) == {shopper.id}
        assert await subject_versions(own, shopper) == {1, 2}
        # from now on the new version alone finds the old account
        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as after:
            await signs_in_as(after, shopper)


async def test_an_account_made_while_the_key_was_missing_that_holds_data_stays_in_use(
    database: Database, tmp_path: Path
) -> None:
    """Two accounts of one subject that both hold data are never merged or dropped: the one
    found under the primary version is used, and the old one is kept as it was."""
    async with own_database(database.server_url, tmp_path, "two_accounts") as own:
        old = own.index_keys
        promoted = f"{new_key(2)},{old}"
        only_new = promoted.split(",")[0]
        async with serving(own.settings(index_keys=old, **SMALL_POOL)) as before:
            shopper = await enrol(before, own.issuer)
            await keep(before, shopper, preference("first"))
        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as stranded:
            again = await enrol(stranded, own.issuer, subject=shopper.subject)
            second = await keep(stranded, again, preference("second"))
        async with serving(own.settings(index_keys=promoted, **SMALL_POOL)) as restored:
            await signs_in_as(restored, again)
            listed = await restored.get("/v1/me/preferences", headers=shopper.headers)
            assert [p["id"] for p in listed.json()["items"]] == [second["id"]], listed.text
        assert await accounts(own, shopper.id, again.id) == {shopper.id, again.id}
