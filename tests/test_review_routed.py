"""The till lookup says the same under both database layouts: each scenario runs with the one
statement (``single``, LOOKUP) and with the route first (``distributed``, ROUTE then
LOOKUP_ROUTED), in mixed batches, between the two statements and across two workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from msgspec import UNSET

from prefs import credentials, db
from prefs.crypto import DecryptionError, api_key_hash
from prefs.errors import NotFound, TooManyRequests, Unauthenticated
from prefs.pos.schemas import LookupResult
from prefs.pos.service import (
    LOOKUP_ROUTED,
    LOOKUP_SERVER_SETTINGS,
    ROUTE,
    LookupBatcher,
    _arguments,
    lookup,
)
from prefs.throttle import ThrottledTills, count_misses
from tests.support.customer import checkout_code, grant
from tests.support.stores import fresh_store
from tests.support.till import disclosures, fresh_card, shopper, till_key, visits
from tests.test_lookup_batching import LOOKUP_TYPES, access_log_refusing, generic_plan, reads


@pytest.fixture
async def pools(database) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two pools: the connections of two worker processes."""
    opened = [await db.create_pool(database.url, 1, 2, LOOKUP_SERVER_SETTINGS) for _ in range(2)]
    yield opened
    for pool in opened:
        await pool.close()


def plain(card: str) -> str:
    return card.replace(" ", "")


def batcher_of(pool: asyncpg.Pool, vault: Any, routed: bool, **limits: int) -> LookupBatcher:
    return LookupBatcher(
        pool,
        64,
        1,
        misses_per_key=limits.get("per_key", 1000),
        misses_per_store=limits.get("per_store", 1000),
        vault=vault,
        routed=routed,
    )


async def code_store(conn: asyncpg.Connection, vault: Any, code: str) -> str | None:
    store: str | None = await conn.fetchval(
        "SELECT store FROM checkout_codes WHERE code_hash = ANY($1::bytea[])",
        vault.index.all_digests("checkout-code", code.encode()),
    )
    return store


async def near_its_limit(client: Any, conn: asyncpg.Connection, new_customer: Any) -> Any:
    """A customer with a fresh checkout code, and a till key with one miss left (per_key=2): its
    code after one of its own lookups makes a batch undecided."""
    near, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, near))["code"]
    _, near_key = await till_key(conn, fresh_store())
    await count_misses(conn, [(api_key_hash(near_key), "elsewhere")], 2, 100)
    return near, code, near_key


async def one_miss_left(
    batcher: LookupBatcher, tills: ThrottledTills, key: str, known_card: str
) -> None:
    """The till key has one miss left (per_key=2 and one counted): a miss, then even a card that
    would be found is refused."""
    vault = batcher.vault
    miss = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(fresh_card()), None), return_exceptions=True
    )
    assert isinstance(miss[0], NotFound), miss
    refused = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(known_card), None), return_exceptions=True
    )
    assert isinstance(refused[0], TooManyRequests), refused


async def test_a_mixed_batch_of_stores_customers_cards_and_codes(
    client, conn, new_customer, pools, vault, routed
):
    """Cards and codes of several stores and customers in one batch: the same customer by card
    and by code, one code used by two stores (only one is shown it, the one it is bound to), a
    partial grant shown exactly, a card nobody granted, a revoked key and an unknown card."""
    store_a, store_b = fresh_store(), fresh_store()
    _, key_a = await till_key(conn, store_a)
    _, key_b = await till_key(conn, store_b)
    revoked, revoked_key = await till_key(conn, store_b)
    await credentials.revoke(conn, revoked.id)
    both, both_card, both_kept = await shopper(new_customer, client)
    await grant(client, both)
    both_code = (await checkout_code(client, both, fields=["product"]))["code"]
    partial, partial_card, partial_kept = await shopper(new_customer, client)
    chosen = [partial_kept[2]["id"], partial_kept[0]["id"]]
    await grant(client, partial, fields=["note"], preferences=chosen)
    shared_code_owner, _, _ = await shopper(new_customer, client)
    shared_code = (await checkout_code(client, shared_code_owner))["code"]
    ungranted, ungranted_card, _ = await shopper(new_customer, client)

    batcher = batcher_of(pools[0], vault, routed)
    tills = ThrottledTills()
    answers = await asyncio.gather(
        lookup(batcher, vault, tills, key_a, plain(both_card), None),
        lookup(batcher, vault, tills, key_b, None, both_code),
        lookup(batcher, vault, tills, key_b, plain(partial_card), None),
        lookup(batcher, vault, tills, key_a, None, shared_code),
        lookup(batcher, vault, tills, key_b, None, shared_code),
        lookup(batcher, vault, tills, key_a, plain(ungranted_card), None),
        lookup(batcher, vault, tills, revoked_key, plain(both_card), None),
        lookup(batcher, vault, tills, key_b, plain(fresh_card()), None),
        return_exceptions=True,
    )
    assert batcher.statements == 1
    by_card, by_code, partial_view, shared_a, shared_b, no_grant, revoked_try, unknown = answers
    assert isinstance(by_card, LookupResult) and by_card.via == "card"
    assert [p.product.name for p in by_card.preferences] == [  # type: ignore[union-attr]
        p["product"]["name"] for p in both_kept
    ]
    assert isinstance(by_code, LookupResult) and by_code.via == "code"
    assert by_code.fields == ["product"]
    assert isinstance(partial_view, LookupResult)
    # the granted two, in the customer's rank order, numbered 1..2, the note alone
    assert [p.note for p in partial_view.preferences] == [
        partial_kept[0].get("note"),
        partial_kept[2].get("note"),
    ]
    assert [p.rank for p in partial_view.preferences] == [1, 2]
    assert all(p.product is UNSET and p.attributes is UNSET for p in partial_view.preferences)
    shown_at = [
        store
        for store, answer in ((store_a, shared_a), (store_b, shared_b))
        if isinstance(answer, LookupResult)
    ]
    assert shown_at == [store_a], (shared_a, shared_b)  # the first store to use it, in batch order
    assert await code_store(conn, vault, shared_code) == shown_at[0]
    assert sum(isinstance(a, NotFound) for a in (shared_a, shared_b)) == 1
    assert isinstance(no_grant, NotFound) and isinstance(unknown, NotFound)
    assert isinstance(revoked_try, Unauthenticated)
    assert await disclosures(conn, both.id) == 2
    assert await disclosures(conn, partial.id) == 1
    assert await disclosures(conn, shared_code_owner.id) == 1
    assert await disclosures(conn, ungranted.id) == 0
    [record] = await visits(conn, vault, partial.id)
    assert sorted(record["preference_ids"]) == sorted(uuid.UUID(i) for i in chosen)
    assert record["store"] == store_b


async def test_a_batch_where_nothing_matches_counts_each_miss_and_refuses_past_the_limit(
    conn, pools, vault, routed
):
    store = fresh_store()
    _, key = await till_key(conn, store)
    _, other = await till_key(conn, store)
    batcher = batcher_of(pools[0], vault, routed, per_key=3, per_store=4)
    tills = ThrottledTills()
    answers = await asyncio.gather(
        *(lookup(batcher, vault, tills, key, plain(fresh_card()), None) for _ in range(5)),
        *(lookup(batcher, vault, tills, other, None, uuid.uuid4().hex[:8]) for _ in range(3)),
        return_exceptions=True,
    )
    assert batcher.statements == 1
    assert [type(a) for a in answers] == [NotFound] * 3 + [TooManyRequests] * 2 + [NotFound] + [
        TooManyRequests
    ] * 2
    assert await conn.fetchval("SELECT misses FROM store_misses WHERE store = $1", store) == 4


async def test_a_throttled_stores_till_beside_another_stores_in_one_batch(
    client, conn, new_customer, pools, vault, routed
):
    """The throttled store's till is refused and shown nothing; the other store's is answered."""
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    code = (await checkout_code(client, customer))["code"]
    throttled_store, other_store = fresh_store(), fresh_store()
    _, throttled_key = await till_key(conn, throttled_store)
    _, other_key = await till_key(conn, other_store)
    await conn.execute("INSERT INTO store_misses VALUES ($1, now(), 120)", throttled_store)
    batcher = batcher_of(pools[0], vault, routed, per_key=30, per_store=120)
    tills = ThrottledTills()
    refused_card, refused_code, answered = await asyncio.gather(
        lookup(batcher, vault, tills, throttled_key, plain(card), None),
        lookup(batcher, vault, tills, throttled_key, None, code),
        lookup(batcher, vault, tills, other_key, plain(card), None),
        return_exceptions=True,
    )
    assert isinstance(refused_card, TooManyRequests)
    assert isinstance(refused_code, TooManyRequests)
    assert isinstance(answered, LookupResult)
    assert await disclosures(conn, customer.id) == 1
    assert await code_store(conn, vault, code) is None  # a refused till binds nothing
    assert (
        await conn.fetchval("SELECT misses FROM store_misses WHERE store = $1", throttled_store)
        == 120
    )


async def test_a_customer_whose_data_key_is_missing_fails_alone_and_is_no_miss_of_the_till(
    client, conn, new_customer, pools, vault, routed
):
    """A customer found and granted whose data key row is gone (a damaged database): nothing is
    shown or logged, the other lookups of the batch are answered, and the till is not charged a
    miss for it: both layouts alike."""
    _, key = await till_key(conn)
    broken, broken_card, _ = await shopper(new_customer, client)
    fine, fine_card, _ = await shopper(new_customer, client)
    for customer in (broken, fine):
        await grant(client, customer)
    broken_id = uuid.UUID(broken.id)
    await conn.execute(  # set aside, put back after
        f"CREATE TEMP TABLE kept_key AS SELECT * FROM customer_keys WHERE customer_id = '{broken_id}'"
    )
    await conn.execute("DELETE FROM customer_keys WHERE customer_id = $1", broken_id)
    try:
        batcher = batcher_of(pools[0], vault, routed)
        tills = ThrottledTills()
        lost, answered = await asyncio.gather(
            lookup(batcher, vault, tills, key, plain(broken_card), None),
            lookup(batcher, vault, tills, key, plain(fine_card), None),
            return_exceptions=True,
        )
    finally:
        await conn.execute("INSERT INTO customer_keys SELECT * FROM kept_key; DROP TABLE kept_key")
    assert isinstance(answered, LookupResult)
    assert isinstance(lost, DecryptionError), lost
    assert await disclosures(conn, broken.id) == 0
    assert (
        await conn.fetchval("SELECT misses FROM key_misses WHERE key_hash = $1", api_key_hash(key))
        is None
    )


async def test_an_erased_customer_is_a_miss(client, conn, new_customer, pools, vault, routed):
    _, key = await till_key(conn)
    erased, card, _ = await shopper(new_customer, client)
    await grant(client, erased)
    code = (await checkout_code(client, erased))["code"]
    response = await client.delete("/v1/me", headers=erased.headers)
    assert response.status_code == 204, response.text
    batcher = batcher_of(pools[0], vault, routed)
    tills = ThrottledTills()
    answers = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(card), None),
        lookup(batcher, vault, tills, key, None, code),
        return_exceptions=True,
    )
    assert [type(a) for a in answers] == [NotFound, NotFound]


async def test_a_key_revoked_or_a_code_ended_between_the_route_and_the_lookup(
    client, conn, new_customer, vault
):
    """The lookup reads the keys and codes again: a key revoked after the route has no row (401),
    a code ended after it is a miss."""
    store = fresh_store()
    revoked, revoked_key = await till_key(conn, store)
    _, key = await till_key(conn, store)
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer)
    code = (await checkout_code(client, customer))["code"]
    card_hashes = vault.index.all_digests("card", plain(card).encode())
    code_hashes = vault.index.all_digests("checkout-code", code.encode())
    arguments = _arguments(
        [(api_key_hash(revoked_key), card_hashes, ()), (api_key_hash(key), (), code_hashes)]
    )
    _, keys, _, cards, _, codes = arguments
    route = await conn.fetchrow(ROUTE, keys, cards, codes)
    await credentials.revoke(conn, revoked.id)
    await conn.execute("DELETE FROM checkout_codes WHERE code_hash = ANY($1::bytea[])", codes)
    rows = await conn.fetch(
        LOOKUP_ROUTED, *arguments, 1000, 1000, route["customers"], route["stores"]
    )
    assert [r["i"] for r in rows] == [1]
    assert rows[0]["counted_miss"] and rows[0]["disclosure_id"] is None


async def test_two_workers_racing_on_one_code_show_it_to_one_store_only(
    client, conn, new_customer, pools, vault, routed
):
    """Two workers' batches, at two stores, with the same new code, held at the code's row
    until both are at it: one is shown it, the code is bound to that one's store."""
    customer, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, customer))["code"]
    store_a, store_b = fresh_store(), fresh_store()
    _, key_a = await till_key(conn, store_a)
    _, key_b = await till_key(conn, store_b)
    first, second = (batcher_of(pool, vault, routed) for pool in pools)
    hashes = vault.index.all_digests("checkout-code", code.encode())
    await conn.execute("BEGIN")
    await conn.execute(
        "SELECT * FROM checkout_codes WHERE code_hash = ANY($1::bytea[]) FOR UPDATE", hashes
    )
    try:
        racing = [
            asyncio.create_task(lookup(first, vault, ThrottledTills(), key_a, None, code)),
            asyncio.create_task(lookup(second, vault, ThrottledTills(), key_b, None, code)),
        ]
        for _ in range(500):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            )
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            if waiting >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await conn.execute("COMMIT")
    answers = await asyncio.gather(*racing, return_exceptions=True)
    shown_at = [
        store
        for store, answer in zip((store_a, store_b), answers, strict=True)
        if isinstance(answer, LookupResult)
    ]
    assert len(shown_at) == 1, answers
    assert await code_store(conn, vault, code) == shown_at[0]
    assert await disclosures(conn, customer.id) == 1


async def test_a_till_refused_within_its_batch_binds_no_code(
    client, conn, new_customer, pools, vault, routed
):
    """A till whose misses earlier in the same batch used up its limit is refused its code
    lookup: the code stays free for the store the customer is shown it at next."""
    customer, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, customer))["code"]
    store_a, store_b = fresh_store(), fresh_store()
    _, key_a = await till_key(conn, store_a)
    _, key_b = await till_key(conn, store_b)
    batcher = batcher_of(pools[0], vault, routed, per_key=2, per_store=100)
    tills = ThrottledTills()
    *misses, refused = await asyncio.gather(
        *(lookup(batcher, vault, tills, key_a, plain(fresh_card()), None) for _ in range(2)),
        lookup(batcher, vault, tills, key_a, None, code),
        return_exceptions=True,
    )
    assert [type(m) for m in misses] == [NotFound, NotFound]
    assert isinstance(refused, TooManyRequests)
    assert await code_store(conn, vault, code) is None
    assert isinstance(await lookup(batcher, vault, tills, key_b, None, code), LookupResult)


async def test_a_till_near_its_limit_is_shown_a_code_its_batch_could_not_judge_at_once(
    client, conn, new_customer, pools, vault, routed
):
    """A till one miss from its limit uses a code after a hit and a miss in the same batch: the
    batch cannot know at once whether the code's lookup is refused (that depends on the lookups
    before it), so it binds nothing and is looked up again: the hit and the miss as a batch,
    then the code's lookup. That is not refused (one miss before it), so it binds the code and
    is shown it."""
    hit_customer, hit_card, _ = await shopper(new_customer, client)
    await grant(client, hit_customer)
    code_customer, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, code_customer))["code"]
    store = fresh_store()
    _, key = await till_key(conn, store)
    batcher = batcher_of(pools[0], vault, routed, per_key=2, per_store=100)
    tills = ThrottledTills()
    answers = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(hit_card), None),
        lookup(batcher, vault, tills, key, plain(fresh_card()), None),
        lookup(batcher, vault, tills, key, None, code),
        return_exceptions=True,
    )
    hit, miss, by_code = answers
    assert isinstance(hit, LookupResult) and isinstance(miss, NotFound), answers
    assert isinstance(by_code, LookupResult) and by_code.via == "code", answers
    assert batcher.statements == 1 + 2  # the batch, the two lookups before the code, the code
    assert await code_store(conn, vault, code) == store
    assert await disclosures(conn, hit_customer.id) == 1  # logged once, by its lookup alone
    assert await disclosures(conn, code_customer.id) == 1
    # the batch's one miss counted once: one more is the key's last, the next is refused
    again = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(fresh_card()), None),
        return_exceptions=True,
    )
    assert isinstance(again[0], NotFound)
    refused = await asyncio.gather(
        lookup(batcher, vault, tills, key, plain(hit_card), None), return_exceptions=True
    )
    assert isinstance(refused[0], TooManyRequests)


async def test_a_till_that_makes_its_batch_undecided_costs_the_other_tills_two_looks_not_one_each(
    client, conn, new_customer, pools, vault, routed
):
    """One till near its limit can make any batch it joins undecided (a hit, then a fresh code).
    The other tills' lookups in that batch are answered by three looks in all (the batch, the
    lookups before the undecided one, the rest), not one each, and each is answered as alone:
    every hit shown and logged once, every miss counted once."""
    shared_customer, shared_card, _ = await shopper(new_customer, client)
    await grant(client, shared_customer)
    near, fresh_code, near_key = await near_its_limit(client, conn, new_customer)
    others = [(await till_key(conn, fresh_store()))[1] for _ in range(12)]
    batcher = batcher_of(pools[0], vault, routed, per_key=2, per_store=100)
    tills = ThrottledTills()
    before = [lookup(batcher, vault, tills, key, plain(shared_card), None) for key in others[:6]]
    misses = [lookup(batcher, vault, tills, key, plain(fresh_card()), None) for key in others[6:]]
    answers = await asyncio.gather(
        *before,
        lookup(batcher, vault, tills, near_key, plain(shared_card), None),
        lookup(batcher, vault, tills, near_key, None, fresh_code),  # undecided: one miss left
        *misses,
        return_exceptions=True,
    )
    assert [type(a).__name__ for a in answers] == ["LookupResult"] * 8 + ["NotFound"] * 6
    assert answers[7].via == "code", answers[7]
    assert batcher.statements == 3, "the other tills' lookups were looked up one by one"
    assert await disclosures(conn, shared_customer.id) == 7  # six other tills and the near one
    assert await disclosures(conn, near.id) == 1
    for key in others[6:]:  # each miss counted once: one more is each key's last
        await one_miss_left(batcher, tills, key, shared_card)


class LooksNoted(LookupBatcher):
    """A batcher that notes the till keys each of its looks (lookup statements) carried."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.looks: list[list[bytes]] = []

    async def _look_up(self, conn: Any, requests: Any) -> Any:
        self.looks.append([key_hash for key_hash, _, _ in requests])
        return await super()._look_up(conn, requests)


async def test_a_till_near_its_limit_with_several_fresh_codes_costs_the_others_one_look_each(
    client, conn, new_customer, pools, vault, routed
):
    """A till one miss from its limit uses three fresh codes, each after one of its own hits: each
    code's lookup is undecided in turn (the first look judges the till's later lookups refused,
    for the miss its first code's lookup seems to be). The other tills' lookups after the till's
    are independent of its (other keys, stores, cards): each is looked at twice, the batch's
    look and one more, not once more per code the till brings."""
    shared_customer, shared_card, _ = await shopper(new_customer, client)
    await grant(client, shared_customer)
    near, near_card, _ = await shopper(new_customer, client)
    await grant(client, near)
    codes = [(await checkout_code(client, near))["code"] for _ in range(3)]
    _, near_key = await till_key(conn, fresh_store())
    others = [(await till_key(conn, fresh_store()))[1] for _ in range(8)]
    batcher = LooksNoted(
        pools[0], 64, 1, misses_per_key=2, misses_per_store=100, vault=vault, routed=routed
    )
    await count_misses(conn, [(api_key_hash(near_key), "elsewhere")], 2, 100)  # one miss left
    tills = ThrottledTills()
    near_lookups = []
    for code in codes:
        near_lookups += [
            lookup(batcher, vault, tills, near_key, plain(near_card), None),
            lookup(batcher, vault, tills, near_key, None, code),
        ]
    answers = await asyncio.gather(
        *(lookup(batcher, vault, tills, key, plain(shared_card), None) for key in others[:4]),
        *near_lookups,
        *(lookup(batcher, vault, tills, key, plain(fresh_card()), None) for key in others[4:]),
        return_exceptions=True,
    )
    assert [type(a).__name__ for a in answers] == ["LookupResult"] * 10 + ["NotFound"] * 4
    assert [a.via for a in answers[4:10]] == ["card", "code"] * 3, answers[4:10]
    assert await disclosures(conn, shared_customer.id) == 4
    assert await disclosures(conn, near.id) == 6
    looked = {key: sum(look.count(api_key_hash(key)) for look in batcher.looks) for key in others}
    assert looked == dict.fromkeys(others, 2), list(looked.values())
    for key in others[4:]:  # each miss counted once: one more is each key's last
        await one_miss_left(batcher, tills, key, shared_card)


async def test_a_lookup_the_database_refuses_in_a_batch_looked_up_again_fails_alone(
    client, conn, new_customer, pools, vault, routed
):
    """A batch made undecided by a till near its limit is looked up again in parts; when the
    database refuses a part for one lookup's data (here its access-log record), that lookup
    fails alone and the other tills' lookups of its part are answered, as for any batch."""
    good = [await shopper(new_customer, client) for _ in range(3)]
    bad, bad_card, _ = await shopper(new_customer, client)
    for customer, _, _ in [*good, (bad, bad_card, None)]:
        await grant(client, customer)
    _, code, near_key = await near_its_limit(client, conn, new_customer)
    keys = [(await till_key(conn, fresh_store()))[1] for _ in range(4)]
    batcher = batcher_of(pools[0], vault, routed, per_key=2, per_store=100)
    async with access_log_refusing(conn, bad.id):
        tills = ThrottledTills()
        answers = await asyncio.gather(
            *(
                lookup(batcher, vault, tills, key, plain(card), None)
                for key, (_, card, _) in zip(keys[:3], good, strict=True)
            ),
            lookup(batcher, vault, tills, keys[3], plain(bad_card), None),
            lookup(batcher, vault, tills, near_key, plain(good[0][1]), None),
            lookup(batcher, vault, tills, near_key, None, code),  # undecided: one miss left
            return_exceptions=True,
        )
    *fine, refused, near_hit, by_code = answers
    assert all(isinstance(answer, LookupResult) for answer in fine), fine
    assert isinstance(refused, asyncpg.RaiseError), refused
    assert isinstance(near_hit, LookupResult) and isinstance(by_code, LookupResult), answers
    assert await disclosures(conn, good[0][0].id) == 2  # a till's, and the near till's
    assert [await disclosures(conn, customer.id) for customer, _, _ in good[1:]] == [1, 1]
    assert await disclosures(conn, bad.id) == 0
    assert await code_store(conn, vault, code) is not None


async def test_the_first_store_in_a_batch_to_use_a_code_binds_it_when_its_till_is_safe(
    client, conn, new_customer, pools, vault, routed
):
    """Two stores' tills use one code in a batch, the first with misses to spare: it binds the
    code and is shown it, the second is a miss, and the batch needs no second look."""
    owner, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, owner))["code"]
    store_a, store_b = fresh_store(), fresh_store()
    _, key_a = await till_key(conn, store_a)
    _, key_b = await till_key(conn, store_b)
    batcher = batcher_of(pools[0], vault, routed, per_key=5, per_store=100)
    tills = ThrottledTills()
    first, second = await asyncio.gather(
        lookup(batcher, vault, tills, key_a, None, code),
        lookup(batcher, vault, tills, key_b, None, code),
        return_exceptions=True,
    )
    assert isinstance(first, LookupResult) and isinstance(second, NotFound), (first, second)
    assert batcher.statements == 1
    assert await code_store(conn, vault, code) == store_a


async def empty_plan_reads(conn: asyncpg.Connection, statement: str, types: list[str]) -> Any:
    """What ``statement``'s kept generic plan reads when made on empty, analyzed tables: copies
    of the lookup's tables in a schema of their own, first on the search path, all rolled back
    (ANALYZE writes a table's size in place, outside any transaction: never the real tables)."""
    tables = ["credentials", "key_misses", "store_misses", "checkout_codes", "card_index"]
    tables += ["consents", "customer_keys", "preferences", "catalogue_state"]
    empty = conn.transaction()
    await empty.start()
    try:
        await conn.execute(
            "CREATE SCHEMA review_empty; SET LOCAL search_path = review_empty, public"
        )
        for table in tables:
            await conn.execute(
                f"CREATE TABLE review_empty.{table} (LIKE public.{table} INCLUDING ALL)"
            )
        await conn.execute(f"ANALYZE {', '.join(tables)}")
        return reads(await generic_plan(conn, statement, types))
    finally:
        await empty.rollback()


async def test_the_routed_statements_kept_plans_read_by_key_even_when_planned_on_empty_tables(
    conn,
):
    """A lookup connection keeps its generic plan while the tables grow: planned when the till's
    tables were empty, ROUTE and LOOKUP_ROUTED still read every table by its key, never a whole
    index."""
    route = await empty_plan_reads(conn, ROUTE, ["bytea[]"] * 3)
    routed = await empty_plan_reads(conn, LOOKUP_ROUTED, [*LOOKUP_TYPES, "uuid[]", "text[]"])
    whole = [read for read in route + routed if not read[1] and read[0] != "catalogue_state"]
    assert whole == [], whole


@pytest.mark.parametrize("per_transaction", [False, True], ids=["autocommit", "pooler"])
async def test_a_code_bound_by_a_batch_looked_up_again_stays_free_when_its_till_is_refused_then(
    client, conn, new_customer, pools, vault, routed, per_transaction
):
    """A batch with an undecided lookup is looked up again: the lookups not entangled with it
    as a batch, then the entangled ones. The code a safe till after it (a till of the same
    store: entangled) bound in the first look must not stay bound if that till, looked up again
    after another worker counted its last misses, is refused: the code stays free for the next
    store."""
    hit_customer, hit_card, _ = await shopper(new_customer, client)
    await grant(client, hit_customer)
    owner, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, owner))["code"]  # the safe till's
    near, _, _ = await shopper(new_customer, client)
    undecided_code = (await checkout_code(client, near))["code"]
    store_b, store_u = fresh_store(), fresh_store()
    _, key_a = await till_key(conn, store_u)
    _, key_b = await till_key(conn, store_b)
    _, key_u = await till_key(conn, store_u)
    per_key = 3
    # till u one miss from its limit; till b with a miss row, held below while b is looked up
    await count_misses(conn, [(api_key_hash(key_u), store_u)] * (per_key - 1), per_key, 1000)
    await count_misses(conn, [(api_key_hash(key_b), store_b)], per_key, 1000)
    batcher = LookupBatcher(
        pools[0],
        64,
        1,
        misses_per_key=per_key,
        misses_per_store=1000,
        vault=vault,
        routed=routed,
        settings_per_transaction=per_transaction,
    )
    tills = ThrottledTills()
    await conn.execute("BEGIN")
    await conn.execute(
        "SELECT * FROM key_misses WHERE key_hash = $1 FOR UPDATE", api_key_hash(key_b)
    )
    try:
        batch = [
            asyncio.create_task(lookup(batcher, vault, tills, key_b, plain(fresh_card()), None)),
            asyncio.create_task(lookup(batcher, vault, tills, key_u, plain(hit_card), None)),
            asyncio.create_task(lookup(batcher, vault, tills, key_u, None, undecided_code)),
            asyncio.create_task(lookup(batcher, vault, tills, key_a, None, code)),  # safe: binds
        ]
        for _ in range(500):  # the first look is over: b's miss, looked up again, waits
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            )
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            if waiting >= 1:
                break
            await asyncio.sleep(0.01)
        assert waiting >= 1
        async with pools[1].acquire() as other_worker:  # till a's misses, on another worker
            await count_misses(
                other_worker, [(api_key_hash(key_a), store_u)] * per_key, per_key, 1000
            )
    finally:
        await conn.execute("COMMIT")
    answers = await asyncio.gather(*batch, return_exceptions=True)
    assert [type(a) for a in answers] == [NotFound, LookupResult, LookupResult, TooManyRequests]
    assert batcher.statements == 1 + 2  # the batch, b's and u's hit, u's code and a's
    assert await code_store(conn, vault, code) is None, "a refused till bound the code"
    assert await disclosures(conn, owner.id) == 0
