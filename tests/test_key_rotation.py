"""Master-key and index-key rotation, on databases of their own: nothing written under an old key
is lost, rotations run beside live traffic and each other, and card lookups never fail."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from prefs import credentials
from prefs.keys import service as keys
from prefs.rights import service as rights
from tests.support.customer import bearer, grant, keep
from tests.support.database import Database
from tests.support.rights import (
    OwnDatabase,
    Shopper,
    enrol,
    fresh_card,
    items,
    look_up,
    new_key,
    own_database,
    preference,
    reorder,
    run_prefs,
    till,
)
from tests.support.servers import serving

SMALL_POOL = {"PREFS_POOL_MIN_SIZE": "1", "PREFS_POOL_MAX_SIZE": "8"}


@contextlib.asynccontextmanager
async def connected(own: OwnDatabase) -> AsyncIterator[asyncpg.Connection]:
    conn = await own.connect()
    try:
        yield conn
    finally:
        await conn.close()


async def wraps(own: OwnDatabase) -> dict[int, int]:
    """How many data keys each master-key version wraps."""
    async with connected(own) as conn:
        return (await keys.status(conn, own.vault())).wraps_by_master_version


async def master_version(own: OwnDatabase, shopper: Shopper) -> int:
    async with connected(own) as conn:
        version: int = await conn.fetchval(
            "SELECT master_version FROM customer_keys WHERE customer_id = $1", uuid.UUID(shopper.id)
        )
        return version


async def what_they_see(http: httpx.AsyncClient, shopper: Shopper) -> dict[str, Any]:
    """Everything a customer reads back: profile, preferences, reorders (with snapshots)."""
    profile = await http.get("/v1/me", headers=shopper.headers)
    assert profile.status_code == 200, profile.text
    return {
        "profile": profile.json(),
        "preferences": await items(http, shopper, "/v1/me/preferences"),
        "reorders": await items(http, shopper, "/v1/me/reorders"),
    }


async def customers_with_data(
    http: httpx.AsyncClient, own: OwnDatabase, count: int
) -> list[Shopper]:
    """``count`` customers, each with a card, a preference and a store reorder."""

    async def one() -> Shopper:
        shopper = await enrol(http, own.issuer, card=fresh_card())
        kept = await keep(http, shopper, preference("rotation"))
        await reorder(http, shopper, kept["id"])
        return shopper

    shoppers: list[Shopper] = []
    for start in range(0, count, 10):
        shoppers.extend(
            await asyncio.gather(*(one() for _ in range(start, min(count, start + 10))))
        )
    return shoppers


# -- master keys ------------------------------------------------------------------------------


async def test_data_written_under_the_old_master_key_reads_after_a_new_primary_key(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "master") as own:
        old = own.master_keys
        rotated = f"{new_key(2)},{old}"
        async with serving(own.settings(**SMALL_POOL)) as before:
            shoppers = await customers_with_data(before, own, 3)
            written = [await what_they_see(before, s) for s in shoppers]
        assert await wraps(own) == {1: 3}

        async with serving(own.settings(master_keys=rotated, **SMALL_POOL)) as after:
            read_back = await what_they_see(after, shoppers[0])
            assert read_back == written[0]
            # reading them moved this customer's wrap to the primary; nobody else's yet
            assert await master_version(own, shoppers[0]) == 2
            assert await master_version(own, shoppers[1]) == 1
            assert await wraps(own) == {1: 2, 2: 1}

            response = await after.get("/v1/me/export", headers=shoppers[1].headers)
            assert response.status_code == 200, response.text
            assert response.json()["preferences"] == written[1]["preferences"]
            assert await master_version(own, shoppers[1]) == 2
            assert await what_they_see(after, shoppers[2]) == written[2]
            assert await wraps(own) == {2: 3}

        async with serving(
            own.settings(master_keys=rotated.split(",")[0], **SMALL_POOL)
        ) as only_new:
            assert [await what_they_see(only_new, s) for s in shoppers] == written


async def test_a_process_with_an_older_primary_master_key_never_rewraps_backwards(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "forward") as own:
        old = own.master_keys
        added = f"{old},{new_key(2)}"  # a process of the rolling deploy not yet restarted
        promoted = ",".join(reversed(added.split(",")))
        async with serving(own.settings(**SMALL_POOL)) as before:
            shopper = (await customers_with_data(before, own, 1))[0]
            written = await what_they_see(before, shopper)
        async with (
            serving(own.settings(master_keys=promoted, **SMALL_POOL)) as upgraded,
            serving(own.settings(master_keys=added, **SMALL_POOL)) as lagging,
        ):
            assert await what_they_see(upgraded, shopper) == written
            assert await master_version(own, shopper) == 2
            # the lagging process reads it (and exports it) but leaves the newer wrap alone
            assert await what_they_see(lagging, shopper) == written
            response = await lagging.get("/v1/me/export", headers=shopper.headers)
            assert response.status_code == 200, response.text
            assert await master_version(own, shopper) == 2
            assert await wraps(own) == {2: 1}


async def test_prefs_keys_rotate_run_with_an_older_primary_leaves_newer_wraps_alone(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "rotate_forward") as own:
        old = own.master_keys
        promoted = f"{new_key(2)},{old}"
        async with serving(own.settings(master_keys=promoted, **SMALL_POOL)) as upgraded:
            shopper = (await customers_with_data(upgraded, own, 1))[0]
            written = await what_they_see(upgraded, shopper)
        assert await wraps(own) == {2: 1}
        lagging = ",".join(reversed(promoted.split(",")))  # v1 still primary on this host
        code, output = await run_prefs(
            "keys", "rotate",
            database_url=own.url, data_dir=own.data_dir, master_keys=lagging,
            index_keys=own.index_keys,
        )  # fmt: skip
        assert code == 0, output
        assert await wraps(own) == {2: 1}
        async with serving(own.settings(master_keys=promoted, **SMALL_POOL)) as after:
            assert await what_they_see(after, shopper) == written


async def test_prefs_keys_rotate_rewraps_every_data_key_and_retire_waits_for_it(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "retire") as own:
        old = own.master_keys
        rotated = f"{new_key(2)},{old}"
        settings = own.settings(PREFS_K_ANONYMITY="2", **SMALL_POOL)
        async with serving(settings) as before:
            shoppers = await customers_with_data(before, own, 5)
            wanted = preference("demand")
            for shopper in shoppers[:2]:  # two customers count towards a discontinued product
                await keep(before, shopper, wanted)
                await grant(before, shopper, "insights")
            written = [await what_they_see(before, s) for s in shoppers]
        async with connected(own) as conn:
            _, insights_key = await credentials.create(conn, "insights", "Merchandising")

        async def prefs(*args: str) -> tuple[int, str]:
            return await run_prefs(
                *args,
                database_url=own.url,
                data_dir=own.data_dir,
                master_keys=rotated,
                index_keys=own.index_keys,
            )

        code, output = await prefs("keys", "status")
        assert code == 0, output
        assert "primary v2" in output
        assert "v1: 5 data keys wrapped" in output

        code, output = await prefs("keys", "retire", "1")
        assert code != 0
        assert "still wraps 5 data keys" in output

        code, output = await prefs("keys", "rotate", "--batch", "2")
        assert code == 0, output
        progress = [
            line for line in output.splitlines() if "rewrapped" in line and "so far" in line
        ]
        assert [line.split()[1] for line in progress] == ["2", "4", "5"]
        assert "rotation complete: 5 data keys rewrapped under version 2" in output

        code, output = await prefs("keys", "status")
        assert code == 0, output
        master_section = output.split("index keys")[0]
        assert "v2: 5 data keys wrapped" in master_section
        assert "v1:" not in master_section
        assert await wraps(own) == {2: 5}

        code, output = await prefs("keys", "retire", "2")
        assert code != 0
        assert "primary" in output
        code, output = await prefs("keys", "retire", "1")
        assert code == 0, output
        code, output = await prefs("keys", "status")
        assert "v1: retired" in output

        # with the old key gone from the keyring, everything still reads
        only_new = own.settings(  # ε so large that the released count is exact
            master_keys=rotated.split(",")[0],
            PREFS_K_ANONYMITY="2",
            PREFS_INSIGHTS_EPSILON="1000",
            **SMALL_POOL,
        )
        async with serving(only_new) as after:
            assert [await what_they_see(after, s) for s in shoppers] == written
            response = await after.get(
                "/v1/insights/discontinued-demand", headers=bearer(insights_key)
            )
            assert response.status_code == 200, response.text
            groups = response.json()["groups"]
            assert [(g["product"], g["customers"]) for g in groups] == [(wanted["product"], 2)]


async def test_concurrent_rotations_during_live_traffic_lose_nothing(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "concurrent") as own:
        rotated = f"{new_key(2)},{own.master_keys}"
        async with serving(own.settings(**SMALL_POOL)) as before:
            shoppers = await customers_with_data(before, own, 40)
        assert await wraps(own) == {1: 40}
        vault = own.vault(master_keys=rotated)

        async with serving(own.settings(master_keys=rotated, **SMALL_POOL)) as live:
            failures: list[str] = []
            written: Counter[str] = Counter()
            served = itertools.count()
            stop = asyncio.Event()

            async def traffic(worker: int) -> None:
                chooser = random.Random(worker)
                while not stop.is_set():
                    shopper = chooser.choice(shoppers)
                    kind = chooser.choice(["read", "read", "write", "card", "enrol"])
                    if kind == "read":
                        response = await live.get("/v1/me/preferences", headers=shopper.headers)
                    elif kind == "write":
                        response = await live.post(
                            "/v1/me/preferences",
                            headers=shopper.headers,
                            json=preference(f"during-{worker}"),
                        )
                        written[shopper.id] += response.status_code == 201
                    elif kind == "card":
                        response = await live.patch(
                            "/v1/me", headers=shopper.headers, json={"card": fresh_card()}
                        )
                    else:
                        newcomer = await enrol(live, own.issuer, card=fresh_card())
                        response = await live.get("/v1/me/preferences", headers=newcomer.headers)
                    next(served)
                    if response.status_code >= 300:
                        failures.append(f"{kind}: {response.status_code} {response.text}")

            async def rotation() -> int:
                async with connected(own) as conn:
                    # each batch takes a while, as it would on a big database
                    return await keys.rotate(
                        conn, vault, batch_size=2, progress=lambda _: time.sleep(0.2)
                    )

            def rotation_elsewhere() -> int:
                """A rotation in a process of its own, as `prefs keys rotate` would be."""
                return asyncio.run(rotation())

            workers = [asyncio.create_task(traffic(n)) for n in range(6)]
            await asyncio.sleep(0.3)
            served_before = next(served)
            first, second = await asyncio.gather(
                asyncio.to_thread(rotation_elsewhere), asyncio.to_thread(rotation_elsewhere)
            )
            served_during = next(served) - served_before
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)

            assert failures == []
            assert served_during > 10
            assert sum(written.values()) > 0
            assert first + second <= 40
            after = {s.id: await what_they_see(live, s) for s in shoppers}
            for shopper in shoppers:
                assert len(after[shopper.id]["preferences"]) == 1 + written[shopper.id]
                assert after[shopper.id]["profile"]["card"] is not None
                assert len(after[shopper.id]["reorders"]) == 1

        state = await wraps(own)
        async with connected(own) as conn:
            enrolled = await conn.fetchval("SELECT count(*) FROM customers")
        assert state == {2: enrolled}

        # nothing needs the old key any more: every customer reads the same with the new one alone
        async with serving(
            own.settings(master_keys=rotated.split(",")[0], **SMALL_POOL)
        ) as only_new:
            assert {s.id: await what_they_see(only_new, s) for s in shoppers} == after


# -- index keys -------------------------------------------------------------------------------


async def carded_customers(
    http: httpx.AsyncClient, own: OwnDatabase, count: int, till_key: str
) -> dict[str, tuple[Shopper, str]]:
    """``count`` customers with a card confirmed at ``till_key``, one preference and a `pos`
    grant: card → (customer, sku)."""

    async def one() -> tuple[str, tuple[Shopper, str]]:
        card = fresh_card()
        shopper = await enrol(http, own.issuer, card=card, till=till_key)
        kept = await keep(http, shopper, preference("index"))
        await grant(http, shopper, "pos")
        return card, (shopper, kept["product"]["sku"])

    found: dict[str, tuple[Shopper, str]] = {}
    for start in range(0, count, 10):
        found.update(await asyncio.gather(*(one() for _ in range(start, min(count, start + 10)))))
    return found


class Lookups:
    """Till lookups, round and round the cards, counting every answer that is not the right one."""

    def __init__(self, till_key: str, cards: dict[str, tuple[Shopper, str]]) -> None:
        self.till_key = till_key
        self.cards = cards
        self.failures: list[str] = []
        self.done = 0
        self.target = float("inf")
        self.reached = asyncio.Event()

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        for card in itertools.cycle(list(self.cards)):
            if stop.is_set():
                return
            await self.check(http, card)

    async def check(self, http: httpx.AsyncClient, card: str) -> None:
        response = await look_up(http, self.till_key, card=card)
        self.done += 1
        if self.done >= self.target:
            self.reached.set()
        if response.status_code != 200:
            self.failures.append(f"{response.status_code} {response.text}")
        elif [p["product"]["sku"] for p in response.json()["preferences"]] != [self.cards[card][1]]:
            self.failures.append(f"wrong customer for a card: {response.text}")

    async def until(self, count: int, traffic: list[asyncio.Task[None]]) -> None:
        """Wait, while the traffic runs, until `count` lookups have been answered in all; a
        traffic task that stops early raises its error here."""
        self.target, self.reached = count, asyncio.Event()
        if self.done >= count:
            return
        reached = asyncio.ensure_future(self.reached.wait())
        await asyncio.wait([reached, *traffic], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()
        for task in traffic:
            if task.done():
                task.result()
        assert self.reached.is_set(), f"{self.done} of {count} lookups answered in 120 s"


async def test_card_lookups_never_fail_while_the_index_key_rotates(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "index") as own:
        both = f"{new_key(2)},{own.index_keys}"
        only_new = both.split(",")[0]
        async with serving(own.settings(**SMALL_POOL)) as old_app:
            async with connected(own) as conn:
                _, till_key = await till(conn)
            cards = await carded_customers(old_app, own, 40, till_key)
            lookups = Lookups(till_key, cards)

            async with serving(own.settings(index_keys=both, **SMALL_POOL)) as switching:
                # customers who sign in while both keys are configured move over as they do
                signed_in = [shopper for shopper, _ in list(cards.values())[:10]]
                for shopper in signed_in:
                    assert (
                        await switching.get("/v1/me", headers=shopper.headers)
                    ).status_code == 200
                # a card registered during the switch is written under both versions
                late_card = fresh_card()
                late = await enrol(switching, own.issuer, card=late_card, till=till_key)
                late_kept = await keep(switching, late, preference("late"))
                await grant(switching, late, "pos")
                cards[late_card] = (late, late_kept["product"]["sku"])

                stop = asyncio.Event()
                traffic = [
                    asyncio.create_task(lookups.run(http, stop))
                    for http in (old_app, switching, switching, old_app)
                ]
                async with connected(own) as conn:
                    indexed = await keys.reindex(conn, own.vault(index_keys=both), batch_size=5)
                    status = await keys.status(conn, own.vault(index_keys=both))
                # every card is looked up again after the reindex, whatever the machine's speed
                await lookups.until(lookups.done + 2 * len(cards), traffic)
                stop.set()
                await asyncio.gather(*traffic)

                assert indexed == 41
                assert status.cards_by_index_version == {1: 41, 2: 41}
                assert lookups.failures == []
                for card in cards:
                    await lookups.check(switching, card)
                assert lookups.failures == []

        # the old index key leaves the keyring; the reindex drops what was written under it
        async with serving(own.settings(index_keys=only_new, **SMALL_POOL)) as new_app:
            stop = asyncio.Event()
            traffic = [asyncio.create_task(lookups.run(new_app, stop)) for _ in range(3)]
            async with connected(own) as conn:
                await keys.reindex(conn, own.vault(index_keys=only_new), batch_size=5)
                status = await keys.status(conn, own.vault(index_keys=only_new))
            await lookups.until(lookups.done + 2 * len(cards), traffic)
            stop.set()
            await asyncio.gather(*traffic)
            for card in cards:
                await lookups.check(new_app, card)

            assert status.cards_by_index_version == {2: 41}
            assert lookups.failures == []
            assert lookups.done > 100
            for shopper in [*signed_in, late]:
                response = await new_app.get("/v1/me", headers=shopper.headers)
                assert response.status_code == 200, response.text
                assert response.json()["id"] == shopper.id


async def test_a_customer_erased_during_a_reindex_keeps_no_blind_index(
    database: Database, tmp_path: Path
) -> None:
    async with own_database(database.server_url, tmp_path, "reindex_erase") as own:
        both = f"{new_key(2)},{own.index_keys}"
        async with connected(own) as conn:
            _, till_key = await till(conn)
        async with serving(own.settings(**SMALL_POOL)) as http:
            cards = await carded_customers(http, own, 3, till_key)
        card, (leaving, _) = next(iter(cards.items()))
        vault = own.vault(index_keys=both)

        async with connected(own) as eraser, connected(own) as indexer:
            erasure = eraser.transaction()
            await erasure.start()
            assert await rights.erase(eraser, vault, uuid.UUID(leaving.id))
            reindex = asyncio.create_task(keys.reindex(indexer, vault, batch_size=10))
            await waiting_for_a_lock(eraser, indexer)
            await erasure.commit()
            await asyncio.wait_for(reindex, 30)

            left = await eraser.fetchval(
                "SELECT count(*) FROM card_index WHERE customer_id = $1", uuid.UUID(leaving.id)
            )
            assert left == 0
            assert (
                await eraser.fetchval(
                    "SELECT count(*) FROM card_index WHERE card_hash = ANY($1::bytea[])",
                    vault.index.all_digests("card", card.encode()),
                )
                == 0
            )


async def waiting_for_a_lock(watcher: asyncpg.Connection, waiter: asyncpg.Connection) -> None:
    """Until ``waiter``'s current statement waits for a lock (or it finished)."""
    pid = waiter.get_server_pid()
    for _ in range(200):
        state = await watcher.fetchrow(
            "SELECT wait_event_type, state FROM pg_stat_activity WHERE pid = $1", pid
        )
        if state is None or state["wait_event_type"] == "Lock":
            return
        await asyncio.sleep(0.05)
    pytest.fail("the reindex never reached the erased customer")
