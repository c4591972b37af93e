"""Discontinued demand: merchandising learns how many opted-in customers want a dropped product
back, from counting data that holds no customer id, as one noisy daily release (differential
privacy) whose groups are shown only when their noisy count reaches k.

Most tests read through a second server whose ε is so large that the noise is always zero, so
the counting rules show exactly; the release's stability, its lock and the real mechanism are
tested with the default ε.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from prefs.app import create_app
from prefs.crypto import Vault
from prefs.insights import mechanism
from prefs.retention import service as retention
from prefs.settings import Settings, SettingsError, load
from tests.support.customer import bearer, grant, keep, withdraw
from tests.support.database import Database
from tests.support.partner import PROBLEM_JSON, insights_key
from tests.support.servers import LiveServer

SIZE = {"waist": "34", "leg": "34", "fit": "regular"}
EXACT_READS_PER_DAY = 4


def chinos_with(sku: str, status: str = "discontinued") -> dict[str, Any]:
    """The chinos under a sku no other test uses, so this test's group is its own."""
    return {
        "product": {"sku": sku, "name": "Classic Chino", "brand": "Acme", "category": "trousers"},
        "attributes": {**SIZE, "colour": "khaki"},
        "note": "Please bring them back.",
        "status": status,
    }


@pytest.fixture(scope="module")
def exact_server(settings: Settings, database: Database) -> Iterator[LiveServer]:
    """The service on the same database and keys, with noise too small ever to move a count."""
    exact = load(
        {
            "PREFS_DATA_DIR": str(settings.data_dir),
            **database.app_env,
            "PREFS_INSIGHTS_EPSILON": "1000",
            "PREFS_INSIGHTS_READS_PER_DAY": str(EXACT_READS_PER_DAY),
        }
    )
    with LiveServer(create_app(exact)) as live:
        yield live


@pytest.fixture
async def exact(exact_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=exact_server.url, timeout=30) as http:
        yield http


async def next_day(conn: asyncpg.Connection) -> None:
    """As if a day had passed: the day's release is gone, so the next reader makes a new one."""
    await conn.execute("DELETE FROM demand_releases")


async def release(client: httpx.AsyncClient, api_key: str) -> dict[str, Any]:
    response = await client.get("/v1/insights/discontinued-demand", headers=bearer(api_key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["k"] == 10
    assert all(group["customers"] >= 10 for group in body["groups"])
    return body


async def demand_for(client: httpx.AsyncClient, api_key: str, sku: str) -> list[dict[str, Any]]:
    """The released groups for one sku."""
    return [g for g in (await release(client, api_key))["groups"] if g["product"]["sku"] == sku]


async def counts_for(client: httpx.AsyncClient, api_key: str, sku: str) -> list[int]:
    return [group["customers"] for group in await demand_for(client, api_key, sku)]


async def opted_in(
    client: httpx.AsyncClient,
    new_customer: Any,
    sku: str,
    status: str = "discontinued",
    insights: bool = True,
) -> tuple[Any, dict[str, Any]]:
    customer = await new_customer()
    preference = await keep(client, customer, chinos_with(sku, status))
    if insights:
        await grant(client, customer, "insights", ["product", "attributes"])
    return customer, preference


async def test_a_group_is_released_only_once_k_opted_in_customers_want_it(
    client, exact, conn, new_customer, settings
):
    assert settings.k_anonymity == 10
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"

    nine = [await opted_in(client, new_customer, sku) for _ in range(9)]
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == []

    # Without an insights grant a customer never counts, however discontinued the item.
    await opted_in(client, new_customer, sku, insights=False)
    # Nor does a preference the catalogue still has.
    tenth, available = await opted_in(client, new_customer, sku, status="available")
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == []

    # The catalogue drops it: now it counts, and the group of ten is released the next day.
    dropped = await client.patch(
        f"/v1/me/preferences/{available['id']}",
        headers={**tenth.headers, "If-Match": f'"{available["version"]}"'},
        json={"status": "discontinued"},
    )
    assert dropped.status_code == 200, dropped.text
    await next_day(conn)
    _, api_key = await insights_key(conn)
    assert await demand_for(exact, api_key, sku) == [
        {
            "product": {
                "sku": sku,
                "name": "Classic Chino",
                "brand": "Acme",
                "category": "trousers",
            },
            "size": SIZE,
            "customers": 10,
        }
    ]

    # One withdraws: the day's release does not change, the next one is back under k.
    leaver, _ = nine[0]
    await withdraw(client, leaver, "insights")
    assert await counts_for(exact, api_key, sku) == [10]
    await next_day(conn)
    assert await counts_for(exact, api_key, sku) == []
    await grant(client, leaver, "insights", ["product", "attributes"])
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == [10]


async def test_each_customer_counts_once_per_product_and_size(client, exact, conn, new_customer):
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    # The same chinos kept twice by one customer still count as one customer.
    keen, _ = customers[0]
    await keep(client, keen, chinos_with(sku))
    # A different size is a different group (and too small to release).
    other_size = await new_customer()
    await keep(client, other_size, {**chinos_with(sku), "attributes": {"waist": "30", "leg": "30"}})
    await grant(client, other_size, "insights", ["product", "attributes"])

    await next_day(conn)
    groups = await demand_for(exact, (await insights_key(conn))[1], sku)
    assert [(group["size"], group["customers"]) for group in groups] == [(SIZE, 10)]


async def test_deleting_the_preference_takes_the_contribution_back(
    client, exact, conn, new_customer
):
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == [10]

    customer, preference = customers[-1]
    deleted = await client.delete(
        f"/v1/me/preferences/{preference['id']}",
        headers={**customer.headers, "If-Match": f'"{preference["version"]}"'},
    )
    assert deleted.status_code == 204, deleted.text
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == []


async def test_a_grant_without_the_product_field_does_not_count(client, exact, conn, new_customer):
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    for _ in range(9):
        await opted_in(client, new_customer, sku)
    sizes_only, _ = await opted_in(client, new_customer, sku, insights=False)
    await grant(client, sizes_only, "insights", ["attributes"])
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == []
    await grant(client, sizes_only, "insights", ["product", "attributes"])
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == [10]


async def test_the_demand_tables_hold_no_customer_id(client, exact, conn, new_customer):
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(10)]
    await next_day(conn)
    assert await counts_for(exact, (await insights_key(conn))[1], sku) == [10]

    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_name IN ('demand_contributions', 'demand_groups', 'demand_release_groups')"
    )
    assert {(c["table_name"], c["column_name"]) for c in columns} == {
        ("demand_contributions", "pseudonym"),
        ("demand_contributions", "group_hash"),
        ("demand_groups", "group_hash"),
        ("demand_groups", "label_ct"),
        ("demand_release_groups", "released_on"),
        ("demand_release_groups", "group_hash"),
        ("demand_release_groups", "customers"),
    }
    assert "uuid" not in {c["data_type"] for c in columns}

    dump = "\n".join(
        [row[0] for row in await conn.fetch("SELECT t::text FROM demand_contributions t")]
        + [row[0] for row in await conn.fetch("SELECT t::text FROM demand_groups t")]
        + [row[0] for row in await conn.fetch("SELECT t::text FROM demand_release_groups t")]
    ).lower()
    assert dump
    for customer, _ in customers:
        ident = uuid.UUID(customer.id)
        assert str(ident) not in dump
        assert ident.hex not in dump
        assert customer.subject.lower() not in dump
    # The group labels are sealed too: no product names or sizes in the clear.
    assert sku.lower() not in dump
    assert "classic chino" not in dump
    assert sku.encode().hex() not in dump


# -- the daily release -----------------------------------------------------------------------


async def test_the_release_is_one_snapshot_a_day_whatever_changes_or_whoever_reads(
    client, conn, new_customer, settings
):
    """With the default ε: repeated and concurrent reads, by any key, see the same noisy
    release all day, so a withdrawal cannot be read off a same-day difference."""
    assert settings.insights_epsilon == 1.0
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(30)]
    await next_day(conn)
    keys = [(await insights_key(conn))[1] for _ in range(6)]
    answers = await asyncio.gather(
        *(client.get("/v1/insights/discontinued-demand", headers=bearer(key)) for key in keys)
    )
    assert all(answer.status_code == 200 for answer in answers)
    first = answers[0].json()
    assert all(answer.json() == first for answer in answers)
    today = datetime.now(UTC).date()
    assert first["released_on"] == today.isoformat()
    assert first["epsilon"] == 1.0
    assert first["groups_per_customer"] == mechanism.GROUPS_PER_CUSTOMER
    assert await conn.fetchval("SELECT count(*) FROM demand_releases") == 1  # one noise draw
    # 30 customers: far enough above k that the noise (scale 2/ε) leaves the group released
    assert [g["product"]["sku"] for g in first["groups"]].count(sku) == 1

    for customer, _ in customers[:3]:
        await withdraw(client, customer, "insights")
    assert await release(client, keys[0]) == first

    await next_day(conn)
    later = await release(client, keys[1])
    assert later["released_on"] == today.isoformat()
    assert await conn.fetchval("SELECT count(*) FROM demand_releases") == 1


async def test_a_withdrawal_shows_only_in_the_next_release(client, exact, conn, new_customer):
    sku = f"CL-CHINO-{uuid.uuid4().hex[:10]}"
    customers = [await opted_in(client, new_customer, sku) for _ in range(11)]
    await next_day(conn)
    _, api_key = await insights_key(conn)
    assert await counts_for(exact, api_key, sku) == [11]
    await withdraw(client, customers[0][0], "insights")
    await withdraw(client, customers[1][0], "insights")
    assert await counts_for(exact, api_key, sku) == [11]
    await next_day(conn)
    assert await counts_for(exact, api_key, sku) == []


async def test_a_key_reads_a_limited_number_of_times_a_day(exact, conn):
    _, api_key = await insights_key(conn)
    for _ in range(EXACT_READS_PER_DAY):
        await release(exact, api_key)
    refused = await exact.get("/v1/insights/discontinued-demand", headers=bearer(api_key))
    assert refused.status_code == 429, refused.text
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert 0 < int(refused.headers["retry-after"]) <= 86_400
    # another key is not refused for it
    await release(exact, (await insights_key(conn))[1])


async def test_a_customer_counts_in_at_most_their_top_ranked_groups(
    client, conn, new_customer, vault: Vault
):
    customer = await new_customer()
    skus = [f"CL-CHINO-{uuid.uuid4().hex[:10]}" for _ in range(mechanism.GROUPS_PER_CUSTOMER + 2)]
    for sku in skus:
        await keep(client, customer, chinos_with(sku))
    await grant(client, customer, "insights", ["product", "attributes"])

    pseudonym = vault.index.digest("demand", uuid.UUID(customer.id).bytes)
    rows = await conn.fetch(
        "SELECT g.group_hash, g.label_ct FROM demand_contributions c "
        "JOIN demand_groups g USING (group_hash) WHERE c.pseudonym = $1",
        pseudonym,
    )
    counted = {
        vault.demand_labels.decrypt(row["label_ct"], row["group_hash"]).decode() for row in rows
    }
    assert len(counted) == mechanism.GROUPS_PER_CUSTOMER
    assert all(
        any(sku in label for label in counted) for sku in skus[: mechanism.GROUPS_PER_CUSTOMER]
    )


# -- the mechanism ---------------------------------------------------------------------------


def attack_success(epsilon: float, k: int, trials: int, rng: random.Random) -> float:
    """k-1 fake accounts in each group the target can be counted in (as many as one customer
    can be), the target opted in or not at random; the attacker sees the release and makes the
    best guess (likelihood ratio of what it sees). Returns how often the guess is right."""
    groups = mechanism.GROUPS_PER_CUSTOMER
    alpha = math.exp(-epsilon / groups)

    def pmf(z: int) -> float:
        return (1 - alpha) / (1 + alpha) * alpha ** abs(z)

    def log_ratio(shown: int | None) -> float:
        if shown is None:  # withheld: noisy count under k
            return math.log((alpha / (1 + alpha)) / (1 / (1 + alpha)))
        return math.log(pmf(shown - k) / pmf(shown - (k - 1)))

    right = 0
    for _ in range(trials):
        target_in = rng.random() < 0.5
        counts = {bytes([g]): k - 1 + target_in for g in range(groups)}
        shown = mechanism.noisy_release(counts, epsilon=epsilon, k=k, rng=rng)
        evidence = sum(log_ratio(shown.get(group)) for group in counts)
        right += (evidence > 0) == target_in
    return right / trials


def test_fake_accounts_learn_the_targets_choice_no_better_than_epsilon_allows():
    rng = random.Random(20261203)  # the test harness's reproducibility, not production noise
    for epsilon in (0.5, 1.0, 2.0):
        bound = math.exp(epsilon) / (1 + math.exp(epsilon))
        assert attack_success(epsilon, k=10, trials=20_000, rng=rng) <= bound + 0.01
    # the same attack against a release without noise is always right
    assert attack_success(1000.0, k=10, trials=200, rng=rng) == 1.0


def test_the_threshold_applies_to_the_noisy_count():
    rng = random.Random(7)
    below = [mechanism.noisy_release({b"g": 9}, epsilon=1.0, k=10, rng=rng) for _ in range(2000)]
    at = [mechanism.noisy_release({b"g": 10}, epsilon=1.0, k=10, rng=rng) for _ in range(2000)]
    # nine customers are sometimes shown and ten sometimes withheld, and what is shown is >= k
    assert 0 < sum(b"g" in shown for shown in below) < sum(b"g" in shown for shown in at) < 2000
    assert all(shown[b"g"] >= 10 for shown in below + at if shown)


def test_the_noise_is_the_two_sided_geometric_of_the_stated_epsilon():
    rng = random.Random(11)
    epsilon = 1.0
    draws = [mechanism.two_sided_geometric(epsilon, rng) for _ in range(40_000)]
    alpha = math.exp(-epsilon)
    assert abs(draws.count(0) / len(draws) - (1 - alpha) / (1 + alpha)) < 0.01
    assert abs(sum(draws) / len(draws)) < 0.05
    assert isinstance(mechanism.SECURE_RANDOM, secrets.SystemRandom)


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf"])
def test_an_epsilon_that_is_not_a_positive_number_is_refused(raw, settings):
    with pytest.raises(SettingsError, match="PREFS_INSIGHTS_EPSILON"):
        load({"PREFS_DATA_DIR": str(settings.data_dir), "PREFS_INSIGHTS_EPSILON": raw})


UTC_TODAY = "(now() AT TIME ZONE 'UTC')::date"


async def test_releases_older_than_a_week_and_past_days_reads_are_purged(conn, vault, settings):
    credential, _ = await insights_key(conn)
    await conn.execute(
        "INSERT INTO demand_releases (released_on, epsilon, k, groups_per_customer) "
        f"VALUES ({UTC_TODAY} - 30, 1.0, 10, 2), ({UTC_TODAY} - 3, 1.0, 10, 2) "
        "ON CONFLICT DO NOTHING"
    )
    await conn.execute(
        "INSERT INTO insights_reads (credential_id, read_on, reads) "
        f"VALUES ($1, {UTC_TODAY} - 1, 5)",
        credential.id,
    )
    for _ in range(50):  # the service's own purge may hold the lock for a moment
        purged = await retention.purge(conn, vault, settings.controller, 400)
        if purged is not None:
            break
        await asyncio.sleep(0.1)
    assert purged is not None
    assert purged["demand_releases"] >= 2
    days = {
        row[0] for row in await conn.fetch(f"SELECT {UTC_TODAY} - released_on FROM demand_releases")
    }
    assert 30 not in days and 3 in days
    assert not await conn.fetchval(
        "SELECT count(*) FROM insights_reads WHERE credential_id = $1", credential.id
    )
