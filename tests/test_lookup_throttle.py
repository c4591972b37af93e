"""The till's miss throttle is counted in the database: every worker (and host) sees the same
count, lookups in one batch count the misses before them, and refused lookups disclose nothing."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from prefs import db
from prefs.crypto import Vault, api_key_hash
from prefs.errors import NotFound, TooManyRequests
from prefs.pos.schemas import LookupResult
from prefs.pos.service import LOOKUP_SERVER_SETTINGS, LookupBatcher, lookup
from prefs.throttle import ThrottledTills, count_misses
from tests.support.customer import grant
from tests.support.stores import fresh_store
from tests.support.till import disclosures, fresh_card, shopper, till_key


@pytest.fixture
async def pools(database) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two pools: the connections of two worker processes."""
    opened = [await db.create_pool(database.url, 1, 1, LOOKUP_SERVER_SETTINGS) for _ in range(2)]
    yield opened
    for pool in opened:
        await pool.close()


Worker = Callable[..., tuple[LookupBatcher, ThrottledTills]]


@pytest.fixture(params=[False, True], ids=["single", "distributed"])
def worker(request: pytest.FixtureRequest) -> Worker:
    """A worker's batcher and refusals, with either layout's lookup statements (routed or not)."""

    def start(
        pool: asyncpg.Pool, vault: Vault, per_key: int, per_store: int
    ) -> tuple[LookupBatcher, ThrottledTills]:
        batcher = LookupBatcher(
            pool,
            misses_per_key=per_key,
            misses_per_store=per_store,
            vault=vault,
            routed=request.param,
        )
        return batcher, ThrottledTills()

    return start


def plain(card: str) -> str:
    return card.replace(" ", "")


async def granted_shopper(client, conn, new_customer) -> tuple[Any, str, str]:
    """A shopper who lets tills see everything, their card, and a new till key."""
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    _, key = await till_key(conn)
    return customer, card, key


async def key_misses(conn: asyncpg.Connection, key: str) -> int | None:
    count: int | None = await conn.fetchval(
        "SELECT misses FROM key_misses WHERE key_hash = $1", api_key_hash(key)
    )
    return count


async def store_misses(conn: asyncpg.Connection, store: str) -> int | None:
    count: int | None = await conn.fetchval(
        "SELECT misses FROM store_misses WHERE store = $1", store
    )
    return count


async def test_two_workers_share_one_count_of_a_keys_misses(
    client, conn, new_customer, pools, vault, worker
):
    customer, card, key = await granted_shopper(client, conn, new_customer)
    first, second = (worker(pool, vault, per_key=4, per_store=100) for pool in pools)

    for batcher, tills in (first, second, first, second):  # two misses on each worker
        with pytest.raises(NotFound):
            await lookup(batcher, vault, tills, key, plain(fresh_card()), None)

    for batcher, tills in (first, second):  # the limit holds on both
        with pytest.raises(TooManyRequests) as refused:
            await lookup(batcher, vault, tills, key, plain(card), None)
        assert 1 <= (refused.value.retry_after or 0) <= 60
    assert await disclosures(conn, customer.id) == 0
    assert await key_misses(conn, key) == 4


async def test_a_batch_counts_the_misses_before_each_of_its_lookups(
    client, conn, new_customer, pools, vault, worker
):
    customer, card, key = await granted_shopper(client, conn, new_customer)
    batcher, tills = worker(pools[0], vault, per_key=5, per_store=100)
    cards = [plain(fresh_card()) for _ in range(8)] + [plain(card)]

    answers = await asyncio.gather(
        *(lookup(batcher, vault, tills, key, c, None) for c in cards), return_exceptions=True
    )

    assert batcher.statements == 1  # they went together
    assert [type(a) for a in answers] == [NotFound] * 5 + [TooManyRequests] * 4
    assert await disclosures(conn, customer.id) == 0  # refused: nothing shown, nothing logged
    assert await key_misses(conn, key) == 5


async def test_lookups_that_were_refused_do_not_count_against_the_store(conn, pools, vault, worker):
    store = fresh_store()
    _, guesser = await till_key(conn, store)
    _, neighbour = await till_key(conn, store)
    batcher, tills = worker(pools[0], vault, per_key=3, per_store=5)

    answers = await asyncio.gather(  # one batch: the guesser's ten, then the neighbour's three
        *(lookup(batcher, vault, tills, guesser, plain(fresh_card()), None) for _ in range(10)),
        *(lookup(batcher, vault, tills, neighbour, plain(fresh_card()), None) for _ in range(3)),
        return_exceptions=True,
    )

    assert batcher.statements == 1
    guesses, neighbours = answers[:10], answers[10:]
    assert [type(g) for g in guesses] == [NotFound] * 3 + [TooManyRequests] * 7
    assert [type(n) for n in neighbours] == [NotFound] * 2 + [TooManyRequests]  # 3 + 2 of 5
    assert await store_misses(conn, store) == 5
    assert await key_misses(conn, neighbour) == 2


async def test_a_refused_till_is_refused_at_once_then_answered_when_its_minute_is_over(
    client, conn, new_customer, pools, vault, worker
):
    customer, card, key = await granted_shopper(client, conn, new_customer)
    batcher, tills = worker(pools[0], vault, per_key=2, per_store=100)
    for _ in range(2):
        with pytest.raises(NotFound):
            await lookup(batcher, vault, tills, key, plain(fresh_card()), None)
    with pytest.raises(TooManyRequests):
        await lookup(batcher, vault, tills, key, plain(card), None)
    sent = batcher.statements

    with pytest.raises(TooManyRequests):  # remembered: no round trip
        await lookup(batcher, vault, tills, key, plain(card), None)
    assert batcher.statements == sent

    await conn.execute(  # the minute passes
        "UPDATE key_misses SET window_start = window_start - interval '61 seconds'"
        " WHERE key_hash = $1",
        api_key_hash(key),
    )
    other_batcher, other_tills = worker(
        pools[1], vault, per_key=2, per_store=100
    )  # has not seen it
    answer = await lookup(other_batcher, vault, other_tills, key, plain(card), None)
    assert isinstance(answer, LookupResult)
    assert await disclosures(conn, customer.id) == 1
    with pytest.raises(NotFound):  # a new window: its first miss
        await lookup(other_batcher, vault, other_tills, key, plain(fresh_card()), None)
    assert await key_misses(conn, key) == 1


async def test_a_miss_is_answered_only_once_counted_and_a_hit_beside_it_is_not_held_up(
    client, conn, new_customer, pools, vault, worker
):
    customer, card, key = await granted_shopper(client, conn, new_customer)
    trigger = f"refuse_{uuid.uuid4().hex}"
    await conn.execute(
        f"""
        CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the count is refused for the test'; END $$;
        CREATE TRIGGER {trigger} BEFORE INSERT ON key_misses FOR EACH ROW
            WHEN (NEW.key_hash = '\\x{api_key_hash(key).hex()}'::bytea) EXECUTE FUNCTION {trigger}();
        """
    )
    batcher, tills = worker(pools[0], vault, per_key=5, per_store=100)
    try:
        hit, miss = await asyncio.gather(
            lookup(batcher, vault, tills, key, plain(card), None),
            lookup(batcher, vault, tills, key, plain(fresh_card()), None),
            return_exceptions=True,
        )
    finally:
        await conn.execute(f"DROP TRIGGER {trigger} ON key_misses; DROP FUNCTION {trigger}()")

    assert isinstance(hit, LookupResult)
    assert await disclosures(conn, customer.id) == 1
    assert isinstance(miss, asyncpg.RaiseError)  # not a 404 the throttle never saw
    assert await key_misses(conn, key) is None


async def set_window(
    conn: asyncpg.Connection, key: str, store: str, key_n: int, store_n: int, age: int
) -> None:
    """The key's and the store's windows: ``key_n`` and ``store_n`` misses, started ``age`` s ago."""
    await conn.execute(
        "INSERT INTO key_misses VALUES ($1, now() - make_interval(secs => $3), $2)",
        api_key_hash(key),
        key_n,
        age,
    )
    await conn.execute(
        "INSERT INTO store_misses VALUES ($1, now() - make_interval(secs => $3), $2)",
        store,
        store_n,
        age,
    )


async def test_counting_refuses_misses_past_a_limit_another_worker_reached(conn):
    store = fresh_store()
    _, full = await till_key(conn, store)
    _, other = await till_key(conn, store)
    await set_window(conn, full, store, key_n=3, store_n=3, age=10)  # another worker's misses
    misses = [(api_key_hash(k), store) for k in (full, full, full, other)]

    verdicts = await count_misses(conn, misses, 4, 100)

    assert verdicts[0] is None and verdicts[3] is None
    assert all(isinstance(v, int) and 45 <= v <= 50 for v in verdicts[1:3])  # the key's window
    assert await key_misses(conn, full) == 4
    assert await key_misses(conn, other) == 1
    assert await store_misses(conn, store) == 5  # the refused misses are not the store's


async def test_a_till_past_its_own_limit_does_not_use_up_its_stores(conn):
    store = fresh_store()
    _, guesser = await till_key(conn, store)
    await set_window(conn, guesser, store, key_n=3, store_n=3, age=0)

    verdicts = await count_misses(conn, [(api_key_hash(guesser), store)] * 10, 3, 5)

    assert all(v is not None for v in verdicts)
    assert await store_misses(conn, store) == 3


async def test_a_store_refusal_is_remembered_until_the_stores_window_ends_not_the_keys(
    conn, pools, vault, worker
):
    store = fresh_store()
    _, key = await till_key(conn, store)
    await set_window(conn, key, store, key_n=0, store_n=5, age=55)
    batcher, tills = worker(pools[0], vault, per_key=3, per_store=5)

    with pytest.raises(TooManyRequests) as refused:
        await lookup(batcher, vault, tills, key, plain(fresh_card()), None)

    assert 1 <= (refused.value.retry_after or 0) <= 5
    assert [scope for scope, _ in tills.until] == ["store"]
    assert tills.until["store", store] - time.monotonic() <= 5


async def test_an_ended_window_starts_again_when_counted(conn):
    store = fresh_store()
    _, key = await till_key(conn, store)
    await set_window(conn, key, store, key_n=30, store_n=120, age=61)

    verdicts = await count_misses(conn, [(api_key_hash(key), store)], 30, 120)

    assert verdicts == [None]
    assert await key_misses(conn, key) == 1
    assert await store_misses(conn, store) == 1
