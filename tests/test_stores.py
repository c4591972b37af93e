"""Stores: the directory customers reorder from, and each store's queue at its tills.

A reorder from a store names the store; that store's tills (and no one else's) read it with
the snapshot the customer chose, move it on (accepted → ready → collected, or declined), and
every reading is in the customer's access log.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from prefs import credentials, db
from prefs.errors import InvalidInput, NotFound
from prefs.reorders import service as reorders
from prefs.reorders.schemas import ReorderCreate
from prefs.retention import service as retention
from prefs.stores import service as stores
from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.operator import prefs_command
from tests.support.partner import access_log, my_reorders, partner_key, pull, reorder, set_status
from tests.support.stores import drain, fresh_store, in_directory, move, queue
from tests.support.till import till_key

PROBLEM_JSON = "application/problem+json"


async def store_with_till(conn: Any, name: str | None = None) -> tuple[str, str]:
    """A fresh store of the directory and a till key there."""
    store = await in_directory(conn, name=name)
    _, key = await till_key(conn, store)
    return store, key


async def placed(
    client: Any, customer: Any, preference: dict[str, Any], store: str, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        f"/v1/me/preferences/{preference['id']}/reorders",
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": f"store:{store}", **extra},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


# -- the directory ---------------------------------------------------------------------------


async def test_customers_pick_from_the_open_stores_by_name_a_page_at_a_time(
    client, conn, new_customer
):
    customer = await new_customer()
    tag = uuid.uuid4().hex[:8]
    made = [
        await in_directory(conn, f"{tag}-{n}", f"{tag} Store {chr(ord('E') - n)}") for n in range(5)
    ]
    await stores.close(conn, made[0])

    seen: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"q": tag, "limit": 2}
        if after:
            params["after"] = after
        response = await client.get("/v1/stores", headers=customer.headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += page["items"]
        after = page["next"]
        if after is None:
            break

    # by name (A, B, C, D: store E, made[0], closed and hidden), each once
    assert [s["id"] for s in seen] == [made[4], made[3], made[2], made[1]]
    assert seen[0] == {"id": made[4], "name": f"{tag} Store A", "address": None}


async def test_the_directory_search_matches_ids_names_and_addresses_literally(
    client, conn, new_customer
):
    customer = await new_customer()
    tag = uuid.uuid4().hex[:8]
    await stores.add(conn, stores.entry(f"Q{tag}", f"Covent Garden {tag}", f"12 King St {tag}"))
    await stores.add(conn, stores.entry(f"R{tag}", f"100% Wool {tag}"))

    async def found(q: str) -> list[str]:
        response = await client.get("/v1/stores", headers=customer.headers, params={"q": q})
        assert response.status_code == 200, response.text
        return [s["id"] for s in response.json()["items"]]

    assert await found(f"Q{tag}") == [f"Q{tag}"]  # the start of its id
    assert await found(f"garden {tag}") == [f"Q{tag}"]  # words of its name, any case
    assert await found(f"king st {tag}") == [f"Q{tag}"]  # its address
    assert await found(f"100% Wool {tag}") == [f"R{tag}"]
    assert await found(f"1_0% Wool {tag}") == []  # _ and % are letters here, not wildcards
    assert await found(f"%{tag}") == []


async def test_a_bad_directory_cursor_is_a_400_and_tills_cannot_read_the_directory(
    client, conn, new_customer
):
    customer = await new_customer()
    response = await client.get(
        "/v1/stores", headers=customer.headers, params={"after": "not-a-cursor"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    _, key = await store_with_till(conn)
    refused = await client.get("/v1/stores", headers=bearer(key))
    assert refused.status_code in (401, 403)


async def test_the_operator_keeps_the_directory_and_till_keys_name_one_of_its_stores(conn):
    store = fresh_store()
    with pytest.raises(NotFound, match="add it first"):
        await credentials.create(conn, "pos", "Till 1", store=store)

    added = await stores.add(conn, stores.entry(store, "  Oxford Street ", "214 Oxford St"))
    assert (added.id, added.name, added.address, added.closed_at) == (
        store,
        "Oxford Street",
        "214 Oxford St",
        None,
    )
    with pytest.raises(Exception, match="already in the directory"):
        await stores.add(conn, stores.entry(store, "Again"))
    credential, _ = await credentials.create(conn, "pos", "Till 1", store=store)
    assert credential.store == store

    renamed = await stores.rename(conn, stores.entry(store, "Oxford Circus"), new_address=False)
    assert (renamed.name, renamed.address) == ("Oxford Circus", "214 Oxford St")

    closed, open_reorders, live_keys = await stores.close(conn, store)
    assert closed.closed_at is not None and (open_reorders, live_keys) == (0, 1)
    with pytest.raises(InvalidInput, match="closed"):
        await credentials.create(conn, "pos", "Till 2", store=store)
    assert store in [s.id for s in await stores.list_all(conn)]  # listed, closed


@pytest.mark.parametrize(
    ("store_id", "name"),
    [("", "Nameless"), ("-starts-with-dash", "X"), ("has space", "X"), ("x" * 65, "X"), ("ok", "")],
)
def test_a_bad_store_id_or_name_is_refused_with_what_a_store_needs(store_id, name):
    with pytest.raises(InvalidInput, match="a store id is 1 to 64"):
        stores.entry(store_id, name)


# -- reordering from a store -------------------------------------------------------------------


async def test_a_reorder_names_an_open_store_of_the_directory(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store = await in_directory(conn, name="Covent Garden")

    bare = await reorder(client, customer, chinos["id"], "store")
    assert bare.status_code == 400
    assert bare.headers["content-type"].startswith(PROBLEM_JSON)
    assert "name the store, `store:<store id>`" in bare.text
    assert "GET /v1/stores" in bare.text

    unknown = await reorder(client, customer, chinos["id"], f"store:{fresh_store()}")
    assert unknown.status_code == 404 and "No store" in unknown.json()["detail"]

    made = await reorder(client, customer, chinos["id"], f"store:{store}")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["fulfiller"] == f"store:{store}"
    assert body["store"] == {"id": store, "name": "Covent Garden", "address": None, "closed": False}
    assert body["fields"] == ["product", "attributes"]  # the note only if the customer adds it

    await stores.close(conn, store)
    closed = await reorder(client, customer, chinos["id"], f"store:{store}")
    assert closed.status_code == 404
    assert closed.json()["detail"].startswith("Covent Garden has closed")
    # the customer's reorder stays, with the store as the directory names it now
    [mine] = [r for r in await my_reorders(client, customer) if r["id"] == body["id"]]
    assert mine["store"]["closed"] is True and mine["state"] == "requested"
    assert (await conn.fetchval("SELECT count(*) FROM reorders WHERE store_id = $1", store)) == 1


# -- the store's queue -----------------------------------------------------------------------


async def test_the_whole_store_reorder_from_request_to_collection(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn, name="Oxford Street")
    made = await placed(client, customer, chinos, store, fields=["note", "product", "attributes"])

    items, cursor = await drain(client, key)
    assert [(i["id"], i["state"]) for i in items] == [(made["id"], "requested")]
    [item] = items
    assert item["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
        "note": CHINOS["note"],
    }
    assert item["fields"] == ["product", "attributes", "note"] and item["quantity"] == 1
    assert customer.id not in str(item) and customer.subject not in str(item)

    for state in ("accepted", "ready"):
        moved = await move(client, key, made["id"], state)
        assert moved.status_code == 200, moved.text
        assert moved.json()["state"] == state and moved.json()["item"] is None
        [mine] = await my_reorders(client, customer)
        assert mine["state"] == state
    # each move comes back in the queue: a till polling with its cursor sees where each stands
    again, cursor = await drain(client, key, cursor)
    assert [(i["id"], i["state"]) for i in again] == [(made["id"], "ready")]
    assert again[0]["item"]["product"] == CHINOS["product"]

    collected = await move(client, key, made["id"], "collected")
    assert collected.json()["state"] == "collected"
    finished, _ = await drain(client, key, cursor)
    assert [(i["state"], i["item"], i["fields"]) for i in finished] == [("collected", None, [])]

    # every reading with the snapshot is in the customer's access log, in words
    reads = [e for e in await access_log(client, customer) if e["who"]["kind"] == "pos"]
    assert made["fields"] == ["product", "attributes", "note"]  # the customer added their note
    assert len(reads) == 2
    for entry in reads:
        assert entry["who"]["store"] == store
        assert entry["purpose"] == "reorder" and entry["via"] == "reorder"
        assert entry["fields"] == ["product", "attributes", "note"]
        assert entry["preferences"] == [{"id": chinos["id"], "name": "Classic Chino"}]
        assert "to fulfil a reorder" in entry["summary"]


async def test_a_stores_tills_see_only_its_own_reorders_and_cannot_move_anyone_elses(
    client, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store_a, key_a = await store_with_till(conn)
    store_b, key_b = await store_with_till(conn)
    _, second_till_at_a = await till_key(conn, store_a, name="Till 2")
    partner, partner_api_key = await partner_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])

    at_a = await placed(client, customer, chinos, store_a)
    at_b = await placed(client, customer, chinos, store_b)
    partners = await reorder(client, customer, chinos["id"], f"partner:{partner.partner_id}")
    assert partners.status_code == 201

    seen_a, _ = await drain(client, key_a)
    seen_b, _ = await drain(client, key_b)
    assert [i["id"] for i in seen_a] == [at_a["id"]]
    assert [i["id"] for i in seen_b] == [at_b["id"]]
    assert [i["id"] for i in (await drain(client, second_till_at_a))[0]] == [at_a["id"]]

    for other in (at_b["id"], partners.json()["id"], str(uuid.uuid4())):
        refused = await move(client, key_a, other, "accepted")
        assert refused.status_code == 404, refused.text
        assert refused.headers["content-type"].startswith(PROBLEM_JSON)
    # a partner cannot move a store's reorder either, nor see it
    assert (await set_status(client, partner_api_key, at_a["id"], "accepted")).status_code == 404
    assert at_a["id"] not in str(await pull(client, partner_api_key))
    states = {r["id"]: r["state"] for r in await my_reorders(client, customer)}
    assert (states[at_a["id"]], states[at_b["id"]]) == ("requested", "requested")

    # a cursor handed to store A's tills is no good at store B's
    page = (await queue(client, key_a)).json()
    assert (await queue(client, key_b, page["next"])).status_code == 400


STATES = ["requested", "accepted", "ready", "collected", "declined", "cancelled"]
ALLOWED = {
    ("requested", "accepted"),
    ("accepted", "ready"),
    ("ready", "collected"),
    ("requested", "declined"),
    ("accepted", "declined"),
    ("ready", "declined"),
}
PATHS = {  # how a reorder reaches each state from requested
    "requested": [],
    "accepted": ["accepted"],
    "ready": ["accepted", "ready"],
    "collected": ["accepted", "ready", "collected"],
    "declined": ["declined"],
}


async def test_every_transition_rule_and_repeats_are_no_ops(client, conn, new_customer):
    store, key = await store_with_till(conn)
    wrong = []
    for start in STATES:
        customer = await new_customer()  # a few waiting each: under the limit per customer
        chinos = await keep(client, customer, CHINOS)
        for target in ("accepted", "ready", "collected", "declined"):
            made = await placed(client, customer, chinos, store)
            if start == "cancelled":
                cancelled = await client.post(
                    f"/v1/me/reorders/{made['id']}/cancel", headers=customer.headers
                )
                assert cancelled.status_code == 200
            for step in PATHS.get(start, []):
                assert (await move(client, key, made["id"], step)).status_code == 200
            response = await move(client, key, made["id"], target)
            expected = 200 if (start, target) in ALLOWED or start == target else 409
            if response.status_code != expected:
                wrong.append(f"{start} → {target}: {response.status_code} {response.text}")
            elif expected == 200:
                repeat = await move(client, key, made["id"], target)
                if (repeat.status_code, repeat.json()["state"]) != (200, target):
                    wrong.append(f"{start} → {target} twice: {repeat.text}")
            else:
                assert f"A {start} reorder cannot become {target}" in response.json()["detail"]
    assert not wrong, "\n".join(wrong)

    made = await placed(client, customer, chinos, store)
    for bad in ({"state": "fulfilled"}, {"state": "cancelled"}, {"state": 1}, {}, {"x": 1}):
        response = await client.post(
            f"/v1/pos/reorders/{made['id']}/status", headers=bearer(key), json=bad
        )
        assert response.status_code == 400, (bad, response.text)
    [mine] = [r for r in await my_reorders(client, customer) if r["id"] == made["id"]]
    assert mine["state"] == "requested"


async def test_the_customer_can_cancel_until_the_store_accepts(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    early = await placed(client, customer, chinos, store)
    late = await placed(client, customer, chinos, store)
    _, cursor = await drain(client, key)

    cancel = await client.post(f"/v1/me/reorders/{early['id']}/cancel", headers=customer.headers)
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
    assert (await move(client, key, late["id"], "accepted")).status_code == 200
    too_late = await client.post(f"/v1/me/reorders/{late['id']}/cancel", headers=customer.headers)
    assert too_late.status_code == 409

    changes, _ = await drain(client, key, cursor)
    assert [(c["id"], c["state"]) for c in changes] == [
        (early["id"], "cancelled"),
        (late["id"], "accepted"),
    ]
    assert changes[0]["item"] is None  # cancelled: nothing to do, nothing shown
    assert (await move(client, key, early["id"], "accepted")).status_code == 409


async def test_cancel_and_accept_racing_have_exactly_one_winner(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    outcomes = []
    for _ in range(12):
        made = await placed(client, customer, chinos, store)
        cancel, accept = await asyncio.gather(
            client.post(f"/v1/me/reorders/{made['id']}/cancel", headers=customer.headers),
            move(client, key, made["id"], "accepted"),
        )
        [mine] = [r for r in await my_reorders(client, customer) if r["id"] == made["id"]]
        winners = [r for r in (cancel, accept) if r.status_code == 200]
        losers = [r for r in (cancel, accept) if r.status_code == 409]
        assert len(winners) == 1 and len(losers) == 1, (cancel.text, accept.text)
        assert mine["state"] == winners[0].json()["state"]
        outcomes.append(mine["state"])
    assert set(outcomes) <= {"cancelled", "accepted"}


async def test_erasure_while_a_store_works_a_reorder_leaves_it_cancelled_and_unreadable(
    client, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    accepted = await placed(client, customer, chinos, store)
    waiting = await placed(client, customer, chinos, store)
    assert (await move(client, key, accepted["id"], "accepted")).status_code == 200
    _, cursor = await drain(client, key)

    erased = await client.delete("/v1/me", headers=customer.headers)
    assert erased.status_code == 204

    changes, _ = await drain(client, key, cursor)
    assert sorted((c["id"], c["state"], c["item"]) for c in changes) == sorted(
        [(accepted["id"], "cancelled", None), (waiting["id"], "cancelled", None)]
    )
    assert CHINOS["note"] not in str(changes)
    rows = await conn.fetch(
        "SELECT state, snapshot_ct FROM reorders WHERE reorder_id = ANY($1::uuid[])",
        [uuid.UUID(accepted["id"]), uuid.UUID(waiting["id"])],
    )
    assert [(r["state"], r["snapshot_ct"]) for r in rows] == [("cancelled", None)] * 2
    # read from the start, the queue still shows nothing readable of it
    everything, _ = await drain(client, key)
    assert all(c["item"] is None for c in everything)
    assert CHINOS["note"] not in str(everything)
    assert (await move(client, key, accepted["id"], "ready")).status_code == 409


async def test_a_bad_queue_cursor_is_a_400_and_an_empty_queue_keeps_its_place(
    client, conn, new_customer
):
    store, key = await store_with_till(conn)
    assert (await queue(client, key, "garbage")).status_code == 400
    empty = (await queue(client, key)).json()
    assert empty["items"] == []
    customer = await new_customer()
    made = await placed(client, customer, await keep(client, customer, CHINOS), store)
    later = (await queue(client, key, empty["next"])).json()
    assert [i["id"] for i in later["items"]] == [made["id"]]


# -- completeness: the queue under concurrent writers and late commits ---------------------------

WRITERS = 6
PER_WRITER = 20


class RolledBack(Exception):
    """Raised inside a writer's transaction to roll it back on purpose."""


async def test_a_polling_till_sees_every_committed_change_once_and_ends_at_each_final_state(
    client, conn, database, vault, new_customer
):
    store, key = await store_with_till(conn)
    till = await credentials.verify(conn, "pos", key)
    assert till is not None
    shoppers = []
    for _ in range(12):  # store reorders waiting per customer are limited
        customer = await new_customer()
        shoppers.append((customer, await keep(client, customer, CHINOS)))
    data = ReorderCreate(quantity=1, fulfiller=f"store:{store}")
    committed: set[str] = set()
    rolled_back: set[str] = set()
    writers_done = asyncio.Event()

    async def writer(number: int) -> None:
        """Reorders placed and moved on: through the API, in transactions held open while
        others commit after them, and some rolled back."""
        rng = random.Random(number)
        connection = await db.connect(database.url)
        mine: list[tuple[str, list[str]]] = []  # committed reorders and the moves left to make
        try:
            for i in range(PER_WRITER):
                customer, preference = shoppers[(number + i) % len(shoppers)]
                style = (number + i) % 4
                if mine and i % 2:  # move one of ours on, sometimes held open
                    reorder_id, steps = mine[rng.randrange(len(mine))]
                    if steps:
                        async with connection.transaction():
                            await stores.set_status(
                                connection, till, uuid.UUID(reorder_id), steps.pop(0)
                            )
                            await asyncio.sleep(rng.uniform(0, 0.15) if style < 2 else 0)
                        continue
                if style == 0:
                    committed.add((await placed(client, customer, preference, store))["id"])
                    continue
                try:
                    async with connection.transaction():
                        made = await reorders.create_for_customer(
                            connection,
                            vault,
                            uuid.UUID(customer.id),
                            uuid.UUID(preference["id"]),
                            data,
                        )
                        await asyncio.sleep(rng.uniform(0, 0.2) if style in (1, 3) else 0)
                        if style == 3 and i % 3 == 0:
                            rolled_back.add(str(made.id))
                            raise RolledBack
                except RolledBack:
                    continue
                committed.add(str(made.id))
                mine.append((str(made.id), ["accepted", "ready", "collected"][: rng.randint(0, 3)]))
        finally:
            await connection.close()

    seen: list[tuple[str, str]] = []
    pages = 0

    async def reader() -> None:
        nonlocal pages
        cursor: str | None = None
        while not writers_done.is_set():
            page = (await queue(client, key, cursor, limit=5)).json()
            seen.extend((item["id"], item["state"]) for item in page["items"])
            cursor = page["next"]
            pages += 1
            await asyncio.sleep(0.005)
        for _ in range(200):  # until the last transactions' changes show
            items, cursor = await drain(client, key, cursor)
            seen.extend((item["id"], item["state"]) for item in items)
            final = {
                str(r["reorder_id"]): r["state"]
                for r in await conn.fetch(
                    "SELECT reorder_id, state FROM reorders WHERE store_id = $1", store
                )
            }
            if {i: s for i, s in seen} == final:
                return
            await asyncio.sleep(0.05)

    reading = asyncio.create_task(reader())
    try:
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
    finally:
        writers_done.set()
    await reading

    final = {
        str(r["reorder_id"]): r["state"]
        for r in await conn.fetch(
            "SELECT reorder_id, state FROM reorders WHERE store_id = $1", store
        )
    }
    assert rolled_back and not rolled_back & set(final)
    assert set(final) == committed
    assert len(seen) == len(set(seen)), "a change was delivered twice"
    last_seen = dict(seen)  # each reorder's latest state as the till saw it
    assert last_seen == final, (
        f"missed {sorted(set(final) - set(last_seen))}, "
        f"stale {[i for i in final if last_seen.get(i) not in (None, final[i])]}"
    )
    assert any(state != "requested" for state in final.values()), "the test meant to move some"
    assert pages > 5, f"the reader polled only {pages} times: no real concurrency"


async def test_a_change_held_in_an_open_transaction_is_not_skipped_by_a_later_one(
    client, conn, database, new_customer
):
    """The classic gap: B is placed after A's change started; a cursor handed out while A is
    open must not skip A's change. B waits for A's position to commit (the store's counter is
    A's until then)."""
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    till = await credentials.verify(conn, "pos", key)
    assert till is not None
    first = await placed(client, customer, chinos, store)
    _, cursor = await drain(client, key)

    slow = await db.connect(database.url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        try:
            await stores.set_status(slow, till, uuid.UUID(first["id"]), "accepted")
            later = asyncio.create_task(placed(client, customer, chinos, store))
            await asyncio.sleep(0.3)
            page = (await queue(client, key, cursor)).json()
            assert page["items"] == []  # held back while the older transaction is open
            cursor = page["next"]
        except BaseException:
            await transaction.rollback()
            raise
        await transaction.commit()
    finally:
        await slow.close()

    changes, _ = await drain(client, key, cursor)
    assert [(c["id"], c["state"]) for c in changes] == [
        (first["id"], "accepted"),
        ((await later)["id"], "requested"),
    ]


async def test_the_operator_adds_lists_renames_and_closes_stores_from_the_command_line(
    client, conn, database, settings, new_customer
):
    store = fresh_store()

    async def prefs(*args: str) -> tuple[int, str]:
        return await prefs_command(database, settings, "stores", *args)

    code, out = await prefs("add", store, "--name", "Oxford Street", "--address", "214 Oxford St")
    assert code == 0, out
    assert f"added {store}" in out and "Oxford Street  214 Oxford St" in out
    code, out = await prefs("add", store, "--name", "Again")
    assert code == 1 and f"Store {store} is already in the directory." in out
    assert "Traceback" not in out
    code, out = await prefs("add", "bad id", "--name", "X")
    assert code == 1 and "a store id is 1 to 64" in out

    code, out = await prefs_command(
        database, settings, "credentials", "create", "--kind", "pos", "--name", "Till 1",
        "--store", fresh_store(),
    )  # fmt: skip
    assert code == 1 and "No store" in out and "prefs stores add" in out
    code, out = await prefs_command(
        database, settings, "credentials", "create", "--kind", "pos", "--name", "Till 1",
        "--store", store,
    )  # fmt: skip
    assert code == 0, out

    code, out = await prefs("rename", store, "--name", "Oxford Circus")
    assert code == 0 and "Oxford Circus  214 Oxford St" in out
    code, out = await prefs("rename", store, "--name", "Oxford Circus", "--address", "")
    assert code == 0 and out.rstrip().endswith("Oxford Circus")
    code, out = await prefs("rename", fresh_store(), "--name", "Nowhere")
    assert code == 1 and "No store" in out

    customer = await new_customer()
    await placed(client, customer, await keep(client, customer, CHINOS), store)
    code, out = await prefs("close", store)
    assert code == 0, out
    assert "1 reorder still to finish there" in out
    assert "1 till key still live" in out and "prefs credentials revoke" in out
    code, out = await prefs("list")
    assert code == 0
    [line] = [row for row in out.splitlines() if row.startswith(store)]
    assert "closed" in line and "Oxford Circus" in line


async def test_the_store_sees_the_product_and_sizes_and_the_note_only_when_the_customer_adds_it(
    client, conn, new_customer
):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    plain = await placed(client, customer, chinos, store)
    with_note = await placed(client, customer, chinos, store, fields=["product", "note"])
    items = {i["id"]: i for i in (await drain(client, key))[0]}
    assert items[plain["id"]]["item"] == {
        "product": CHINOS["product"],
        "attributes": CHINOS["attributes"],
    }
    assert items[with_note["id"]]["fields"] == ["product", "note"]
    assert items[with_note["id"]]["item"] == {"product": CHINOS["product"], "note": CHINOS["note"]}

    no_product = await client.post(
        f"/v1/me/preferences/{chinos['id']}/reorders",
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": f"store:{store}", "fields": ["note"]},
    )
    assert no_product.status_code == 400 and "include `product`" in no_product.text
    partner, _ = await partner_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}", ["product"])
    through_partner = await client.post(
        f"/v1/me/preferences/{chinos['id']}/reorders",
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": f"partner:{partner.partner_id}", "fields": ["product"]},
    )
    assert through_partner.status_code == 400
    assert "your consent to it allows" in through_partner.json()["detail"]


async def test_a_customer_may_have_only_so_many_store_reorders_waiting(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, key = await store_with_till(conn)
    made = [
        await placed(client, customer, chinos, store) for _ in range(reorders.MAX_WAITING_AT_STORES)
    ]
    refused = await reorder(client, customer, chinos["id"], f"store:{store}")
    assert refused.status_code == 409, refused.text
    assert "store reorders waiting" in refused.json()["detail"]
    assert (await move(client, key, made[0]["id"], "accepted")).status_code == 200
    await placed(client, customer, chinos, store)  # one was accepted: room for another


async def test_a_closed_store_can_be_reopened(client, conn, new_customer):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store = await in_directory(conn)
    await stores.close(conn, store)
    assert (await reorder(client, customer, chinos["id"], f"store:{store}")).status_code == 404
    reopened = await stores.reopen(conn, store)
    assert reopened.closed_at is None
    await placed(client, customer, chinos, store)
    with pytest.raises(NotFound):
        await stores.reopen(conn, fresh_store())


async def test_what_erasure_left_of_store_reorders_is_purged_once_the_store_had_time_to_see_it(
    client, conn, new_customer, vault, settings
):
    customer = await new_customer()
    chinos = await keep(client, customer, CHINOS)
    store, _ = await store_with_till(conn)
    made = await placed(client, customer, chinos, store)
    assert (await client.delete("/v1/me", headers=customer.headers)).status_code == 204
    kept = "SELECT count(*) FROM reorders WHERE reorder_id = $1"
    assert await conn.fetchval(kept, uuid.UUID(made["id"])) == 1
    await retention.purge(conn, vault, settings.controller, settings.access_log_retention_days)
    assert await conn.fetchval(kept, uuid.UUID(made["id"])) == 1  # the store may not have read it

    await conn.execute(
        "UPDATE reorders SET updated_at = now() - make_interval(days => $2) WHERE reorder_id = $1",
        uuid.UUID(made["id"]),
        retention.ERASED_REORDERS_DAYS + 1,
    )
    purged = await retention.purge(
        conn, vault, settings.controller, settings.access_log_retention_days
    )
    assert purged is not None and purged["erased_reorders"] >= 1
    assert await conn.fetchval(kept, uuid.UUID(made["id"])) == 0


async def test_till_keys_on_a_database_not_yet_migrated_ask_for_prefs_migrate(tmp_path, database):
    """A newcomer's first command on a fresh database: one line, never a traceback."""
    from tests.support.database import admin, with_database

    name = f"prefs_fresh_{uuid.uuid4().hex[:8]}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    try:
        fresh = SimpleNamespace(url=with_database(database.server_url, name))
        for args in (
            ("credentials", "create", "--kind", "pos", "--store", "0421", "--name", "Till 3"),
            ("credentials", "list"),
            ("stores", "list"),
        ):
            code, out = await prefs_command(fresh, SimpleNamespace(data_dir=tmp_path), *args)
            assert code == 1 and "run `prefs migrate` first" in out, (args, out)
            assert "Traceback" not in out
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
