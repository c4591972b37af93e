"""The load-test seed (loadtests/seed.py): the partner grants it writes straight into the tables are
real grants: their ledger records verify, the references it hands Locust are the service's own
pairwise references, and the partner reads and receives reorders through the API with them."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from prefs.consents import ledger
from prefs.customers.service import find_customer_id
from prefs.preferences.service import list_preferences
from prefs.settings import DEV_ISSUER
from tests.support.customer import bearer
from tests.support.partner import pull, reorder
from tests.support.paths import repo_root

CUSTOMERS = 60
PREFERENCES = 3


@pytest.fixture(scope="module")
def seed_module() -> Iterator[ModuleType]:
    """loadtests/seed.py as the module `seed` (its spawned workers import it by that name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo_root() / "loadtests"))
        import seed

        yield seed
    for name in ("seed", "catalogue"):
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def seeded(
    seed_module: ModuleType, database, settings, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two seeds into the session's database, the second extending the first one's JSON."""
    output = tmp_path_factory.mktemp("loadtest") / "seed.json"

    def run() -> dict[str, Any]:
        document: dict[str, Any] = seed_module.seed(
            database.url,
            settings,
            CUSTOMERS,
            PREFERENCES,
            workers=1,
            batch_size=25,
            tills=1,
            stores=1,
            output=output,
            analyse=False,
            partners=2,
            partner_share=0.5,
        )
        return document

    return run(), run()


async def _customer_id(vault, conn, subject: str) -> uuid.UUID:
    customer_id = await find_customer_id(conn, vault.index.subjects(DEV_ISSUER, subject))
    assert customer_id is not None
    return customer_id


def _key_of(document: dict[str, Any], partner_id: str) -> str:
    [key] = [p["key"] for p in document["partners"] if p["id"] == partner_id]
    return key


async def test_seeded_partner_grants_are_ledger_records_that_verify(seeded, conn, vault):
    _, second = seeded
    partners = {p["id"] for p in second["partners"]}
    grants = 0
    for run in second["runs"]:
        for index in range(run["customers"]):
            customer_id = await _customer_id(
                vault, conn, second["subject_format"].format(run=run["run"], index=index)
            )
            head = await conn.fetchrow(
                "SELECT ledger_seq, ledger_head FROM customers WHERE customer_id = $1", customer_id
            )
            assert await ledger.verify_customer(conn, vault.index, customer_id, *head) is None
            records = await conn.fetch(
                "SELECT seq, audience, state, receipt FROM consent_ledger WHERE customer_id = $1 "
                "ORDER BY seq",
                customer_id,
            )
            audiences = [r["audience"] for r in records]
            assert audiences[0] == "pos"
            assert {r["state"] for r in records} == {"ConsentGiven"}
            # every other customer lets tills add what they buy: a grant of no fields
            kept_purchases = [r for r in records if r["audience"] == "purchases"]
            assert len(kept_purchases) == (index % 2 == 0)
            for record in kept_purchases:
                assert record["receipt"]["fields"] == []
                assert record["receipt"]["recipient"]["kind"] == "purchases"
                assert record["receipt"]["purposes"][0]["dpv"] == ["ServicePersonalisation"]
            for record in records[1:]:
                if record["audience"] == "purchases":
                    continue
                partner = record["audience"].removeprefix("partner:")
                assert partner in partners
                assert record["receipt"]["recipient"]["id"] == partner
                assert record["receipt"]["fields"] == ["product", "attributes", "note"]
                assert record["receipt"]["preferences"] == "all"
            live = await conn.fetch(
                "SELECT audience FROM consents WHERE customer_id = $1 ORDER BY audience",
                customer_id,
            )
            assert sorted(audiences) == [row["audience"] for row in live]
            grants += len(records) - 1 - len(kept_purchases)
    # each customer grants each of the two partners with probability 0.5
    assert 0 < grants < 2 * 2 * CUSTOMERS


async def test_the_sampled_references_are_the_services_pairwise_references(seeded, conn, vault):
    _, document = seeded
    sample = document["sample"]["partner_grants"]
    assert sample
    for grant in sample:
        customer_id = await _customer_id(vault, conn, grant["subject"])
        partner_id = uuid.UUID(grant["partner"])
        assert grant["ref"] == vault.index.pairwise(partner_id, customer_id)
        stored = await conn.fetchval(
            "SELECT ref FROM partner_refs WHERE partner_id = $1 AND customer_id = $2",
            partner_id,
            customer_id,
        )
        assert stored == grant["ref"]


def test_seeding_again_keeps_the_json_layout_the_partners_and_the_sample(seeded):
    first, second = seeded
    for key in ("tills", "runs", "card_format", "subject_format", "dev_issuer_key", "partners"):
        assert key in second
    assert set(second["sample"]) == {"cards", "subjects", "partner_grants"}
    assert [p["id"] for p in second["partners"]] == [p["id"] for p in first["partners"]]
    assert all(p["key"].startswith("ptn_") for p in second["partners"])
    assert [r["run"] for r in second["runs"]] == [r["run"] for r in first["runs"]] + [
        second["runs"][-1]["run"]
    ]
    earlier = first["sample"]["partner_grants"]
    assert second["sample"]["partner_grants"][: len(earlier)] == earlier


async def test_a_seeded_partner_reads_and_receives_reorders_from_a_granting_customer(
    seeded, client, issuer
):
    _, document = seeded
    grant = document["sample"]["partner_grants"][-1]
    api_key = _key_of(document, grant["partner"])
    shown = await client.get(
        f"/v1/partner/customers/{grant['ref']}/preferences", headers=bearer(api_key)
    )
    assert shown.status_code == 200, shown.text
    preferences = shown.json()["items"]
    assert len(preferences) == PREFERENCES
    assert all({"product", "attributes", "note"} <= set(p) for p in preferences)

    customer = SimpleNamespace(headers=bearer(issuer.mint(grant["subject"])))
    consents = await client.get("/v1/me/consents", headers=customer.headers)
    assert consents.status_code == 200, consents.text
    [consent] = [
        c for c in consents.json()["items"] if c["audience"] == f"partner:{grant['partner']}"
    ]
    assert consent["reference"] == grant["ref"]

    # the partner's ids are its own: the customer reorders by theirs (same order, all granted)
    own = await client.get("/v1/me/preferences", headers=customer.headers)
    first = own.json()["items"][0]
    assert first["product"] == preferences[0]["product"]
    assert first["id"] != preferences[0]["id"]
    placed = await reorder(client, customer, first["id"], f"partner:{grant['partner']}")
    assert placed.status_code == 201, placed.text
    items, _ = await pull(client, api_key, want=1)
    [seen] = [item for item in items if item["id"] == placed.json()["id"]]
    assert seen["customer"] == grant["ref"]
    assert seen["item"]["product"] == preferences[0]["product"]


async def test_a_seeded_partner_cannot_use_the_other_partners_reference(seeded, client):
    _, document = seeded
    ours, theirs = (p["id"] for p in document["partners"])
    grant = next(g for g in document["sample"]["partner_grants"] if g["partner"] == theirs)
    shown = await client.get(
        f"/v1/partner/customers/{grant['ref']}/preferences",
        headers=bearer(_key_of(document, ours)),
    )
    assert shown.status_code == 404


async def test_the_seed_imports_the_catalogue_its_preferences_name(seeded, conn, vault):
    _, document = seeded
    products = {
        row["sku"]: row["status"]
        for row in await conn.fetch("SELECT sku, status FROM catalogue_products")
    }
    customer_id = await _customer_id(
        vault, conn, document["subject_format"].format(run=document["runs"][0]["run"], index=0)
    )
    kept = await list_preferences(conn, vault, customer_id)
    assert kept and all(p.product.sku in products for p in kept)
    assert sum(status == "discontinued" for status in products.values()) > 100
