"""The retailer's catalogue: `prefs catalogue import` and the two read endpoints, for real.

Imports run the `prefs` command in a subprocess against the suite's database; reads go over
HTTP. Every test names its products with a fresh word, so tests sharing the database never see
each other's products.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from prefs import credentials
from prefs.auth import DevIssuer
from prefs.settings import Settings
from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.database import Database
from tests.support.partner import partner_key, reference
from tests.support.stores import in_directory
from tests.support.till import fresh_card, look_up, till_key


def prefs_command(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PREFS_DATA_DIR": str(settings.data_dir),
        "PREFS_DATABASE_URL": settings.database_url or "",
        "PREFS_DATABASE_POOLER": settings.database_pooler,
        "PREFS_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefs"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def import_without_keys(
    database: Database, data_dir: Path, file: Path, env: str = "production"
) -> subprocess.CompletedProcess[str]:
    """`prefs catalogue import` as a batch job runs it: the database URL and nothing else (no
    master or index keys, no key files in its data dir, nothing else of the service's)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PREFS_")}
    environ.update(
        PREFS_ENV=env,
        PREFS_DATA_DIR=str(data_dir),
        PREFS_DATABASE_URL=database.app_url or database.url,
        PREFS_DATABASE_POOLER=database.pooler,
        PREFS_LOG_LEVEL="WARNING",
    )
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefs"), "catalogue", "import", str(file)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_lines(path: Path, products: list[Any]) -> Path:
    path.write_bytes(
        b"".join((p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n" for p in products)
    )
    return path


def fresh_word() -> str:
    return "w" + secrets.token_hex(4)


async def catalogue_row(conn: asyncpg.Connection, sku: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM catalogue_products WHERE sku = $1", sku)


async def test_an_import_refuses_exactly_the_bad_rows_and_keeps_the_rest(
    settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    word = fresh_word()
    good = [
        {"sku": f"{word}-1", "name": f"Classic Chinos {word}", "status": "discontinued",
         "brand": "Ardent", "category": "trousers",
         "attributes": {"waist": ["32", "34"], "leg": ["32", "34"]}},
        {"sku": f"{word}-2", "name": f"Linen Shirt {word}", "status": "available"},
    ]  # fmt: skip
    bad = [
        {"name": "no sku", "status": "available"},  # line 3
        {"sku": f"{word}-3", "name": "bad status", "status": "sold-out"},  # line 4
        {"sku": f"{word}-1", "name": "again", "status": "available"},  # line 5: duplicate SKU
        b'{"sku": "' + word.encode() + b'-4", "name": "caf\xe9", "status": "available"}',  # 6
        b"not json at all",  # line 7
    ]
    path = write_lines(tmp_path / "products.jsonl", [*good, *bad, {
        "sku": f"{word}-5", "name": f"Wool Socks {word}", "status": "available"}])  # fmt: skip

    done = prefs_command(settings, "catalogue", "import", str(path))

    assert done.returncode == 1, done.stderr  # some lines were refused
    assert "added 3, changed 0, unchanged 0, refused 5" in done.stdout
    for line, words in (
        (3, "sku"),
        (4, "status"),
        (5, "already given on line 1"),
        (6, "not UTF-8"),
        (7, "JSON"),
    ):
        [said] = [text for text in done.stdout.splitlines() if f"line {line}:" in text]
        assert words in said, said
    assert (await catalogue_row(conn, f"{word}-1"))["name"] == f"Classic Chinos {word}"
    assert await catalogue_row(conn, f"{word}-5") is not None
    for refused in (f"{word}-3", f"{word}-4"):
        assert await catalogue_row(conn, refused) is None


async def test_importing_again_changes_nothing_and_a_changed_row_is_reported(
    settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    word = fresh_word()
    products = [
        {"sku": f"{word}-{i}", "name": f"Product {i} {word}", "status": "available"}
        for i in range(5)
    ]
    path = write_lines(tmp_path / "products.jsonl", products)
    first = prefs_command(settings, "catalogue", "import", str(path))
    assert first.returncode == 0, first.stderr
    assert "added 5, changed 0, unchanged 0, refused 0" in first.stdout
    version = await conn.fetchval("SELECT version FROM catalogue_state")

    again = prefs_command(settings, "catalogue", "import", str(path))
    assert "added 0, changed 0, unchanged 5, refused 0" in again.stdout
    assert await conn.fetchval("SELECT version FROM catalogue_state") == version

    products[2]["status"] = "discontinued"
    changed = prefs_command(
        settings, "catalogue", "import", str(write_lines(tmp_path / "b.jsonl", products))
    )
    assert "added 0, changed 1, unchanged 4, refused 0" in changed.stdout
    assert (await catalogue_row(conn, f"{word}-2"))["status"] == "discontinued"
    assert await conn.fetchval("SELECT version FROM catalogue_state") > version


@pytest.mark.parametrize("env", ["production", "development"])
async def test_an_import_needs_no_keys_and_leaves_demand_to_the_service(
    database: Database, conn: asyncpg.Connection, tmp_path: Path, env: str
) -> None:
    """A batch job importing the catalogue holds no key that opens customers' data: the import
    records whose status moved and says the service recounts demand; it makes no keys of its
    own either (in development it once made new ones in its data dir, recounted nobody under
    them, and so lost the moves)."""
    word = fresh_word()
    products = [
        {"sku": f"{word}-{i}", "name": f"Chino {word}", "status": "discontinued"} for i in range(3)
    ]
    await conn.execute(
        "INSERT INTO catalogue_products (sku, name, status) VALUES ($1, 'Chino', 'available')",
        f"{word}-0",
    )
    data_dir = tmp_path / "import-job"
    done = import_without_keys(database, data_dir, write_lines(tmp_path / "p.jsonl", products), env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "added 2, changed 1, unchanged 0, refused 0" in done.stdout
    moved = await conn.fetch(
        "SELECT sku FROM catalogue_moves WHERE sku LIKE $1 ORDER BY sku", f"{word}-%"
    )
    assert [row["sku"] for row in moved] == [p["sku"] for p in products]
    assert not data_dir.exists() or not list(data_dir.iterdir())
    assert "status set or changed for 3 SKUs" in done.stdout
    assert "PREFS_EXPIRY_INTERVAL" in done.stdout


async def test_a_csv_import_reads_its_header_and_names_bad_lines(
    settings: Settings, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    word = fresh_word()
    path = tmp_path / "products.csv"
    path.write_bytes(
        b"sku,name,status,brand,attributes\n"
        + f'{word}-1,Classic Chinos {word},discontinued,Ardent,"{{""waist"": [""34""]}}"\n'.encode()
        + f",no sku {word},available,,\n".encode()
        + f'{word}-2,Shirt {word},available,,"not json"\n'.encode()
        + f"{word}-3,Caf\xe9 {word},available,,\n".encode("latin-1")
        + f"{word}-4,Socks {word},available,,\n".encode()
    )
    done = prefs_command(settings, "catalogue", "import", str(path))
    assert "added 2, changed 0, unchanged 0, refused 3" in done.stdout, done.stdout + done.stderr
    assert "line 3:" in done.stdout and "line 4:" in done.stdout and "line 5:" in done.stdout
    row = await catalogue_row(conn, f"{word}-1")
    assert row is not None and row["attributes"] == {"waist": ["34"]}

    wrong_header = tmp_path / "wrong.csv"
    wrong_header.write_text("sku,title,status\nA,B,available\n")
    refused = prefs_command(settings, "catalogue", "import", str(wrong_header))
    assert refused.returncode != 0
    assert "header" in refused.stderr and "title" in refused.stderr
    assert "Traceback" not in refused.stderr


@pytest.fixture
async def catalogue(settings: Settings, tmp_path: Path) -> str:
    """A word that names 45 chinos and 5 shirts in the catalogue."""
    word = fresh_word()
    products = [
        {"sku": f"CH-{word}-{i:02}", "name": f"Classic Chinos {word} {i:02}",
         "status": "discontinued" if i % 10 == 0 else "available", "brand": "Ardent"}
        for i in range(45)
    ] + [
        {"sku": f"SH-{word}-{i}", "name": f"Linen Shirt {word} {i}", "status": "available"}
        for i in range(5)
    ]  # fmt: skip
    done = prefs_command(
        settings, "catalogue", "import", str(write_lines(tmp_path / "c.jsonl", products))
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return word


async def test_search_finds_products_by_the_start_of_their_words_page_by_page(
    client: httpx.AsyncClient, issuer: DevIssuer, catalogue: str
) -> None:
    customer = bearer(issuer.mint("catalogue-reader"))
    seen: list[str] = []
    after = None
    while True:
        params = {"q": f"chino {catalogue}", "limit": "20", **({"after": after} if after else {})}
        page = await client.get("/v1/catalogue/products", params=params, headers=customer)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [product["sku"] for product in body["items"]]
        after = body["next"]
        if after is None:
            break
    assert len(seen) == 45 and len(set(seen)) == 45
    assert all(sku.startswith("CH-") for sku in seen)

    by_sku = await client.get(
        "/v1/catalogue/products", params={"q": f"sh-{catalogue}"}, headers=customer
    )
    assert {p["sku"] for p in by_sku.json()["items"]} == {f"SH-{catalogue}-{i}" for i in range(5)}

    one = await client.get(f"/v1/catalogue/products/CH-{catalogue}-10", headers=customer)
    assert one.status_code == 200
    assert one.json()["status"] == "discontinued" and one.json()["brand"] == "Ardent"


async def test_tills_and_partners_read_the_catalogue_and_nobody_else(
    client: httpx.AsyncClient, conn: asyncpg.Connection, catalogue: str
) -> None:
    _, till = await credentials.create(
        conn, "pos", "Till 1", store=await in_directory(conn, f"s-{catalogue}")
    )
    _, partner = await credentials.create(conn, "partner", "Tailor", description="Makes chinos")
    _, insights = await credentials.create(conn, "insights", "Merchandising")
    path = f"/v1/catalogue/products/SH-{catalogue}-1"
    for key in (till, partner):
        assert (await client.get(path, headers=bearer(key))).status_code == 200
    for headers in ({}, bearer(insights), bearer("pos_" + "x" * 40), bearer("not-a-token")):
        refused = await client.get(path, headers=headers)
        assert refused.status_code == 401
        assert refused.headers["content-type"].startswith("application/problem+json")


async def test_reads_are_cached_until_an_import_changes_a_product(
    client: httpx.AsyncClient,
    issuer: DevIssuer,
    settings: Settings,
    catalogue: str,
    tmp_path: Path,
) -> None:
    customer = bearer(issuer.mint("catalogue-cache"))
    path = f"/v1/catalogue/products/SH-{catalogue}-2"
    first = await client.get(path, headers=customer)
    etag = first.headers["etag"]
    assert "max-age" in first.headers["cache-control"]
    again = await client.get(path, headers={**customer, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""

    changed = [{"sku": f"SH-{catalogue}-2", "name": "Renamed", "status": "discontinued"}]
    prefs_command(settings, "catalogue", "import", str(write_lines(tmp_path / "r.jsonl", changed)))
    fresh = await client.get(path, headers={**customer, "If-None-Match": etag})
    assert fresh.status_code == 200
    assert fresh.json()["status"] == "discontinued" and fresh.headers["etag"] != etag


async def test_bad_searches_are_clear_400s_and_unknown_products_404(
    client: httpx.AsyncClient, issuer: DevIssuer
) -> None:
    customer = bearer(issuer.mint("catalogue-bad"))
    for params in (
        {"after": "forged"},
        {"limit": "0"},
        {"limit": "201"},
        {"q": "x" * 101},
        {"q": " ".join(["word"] * 9)},
    ):
        answer = await client.get("/v1/catalogue/products", params=params, headers=customer)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    odd = await client.get(
        "/v1/catalogue/products", params={"q": "chino & ! :* ' % _"}, headers=customer
    )
    assert odd.status_code == 200
    missing = await client.get(f"/v1/catalogue/products/{fresh_word()}", headers=customer)
    assert missing.status_code == 404


async def statuses_everywhere(
    client: httpx.AsyncClient, customer: Any, card: str, till: str, partner: str, ref: str
) -> dict[str, str]:
    """The chinos' status as the customer, the export, the till and the partner see it."""
    mine = await client.get("/v1/me/preferences", headers=customer.headers)
    export = await client.get("/v1/me/export", headers=customer.headers)
    at_till = await look_up(client, till, card=card)
    at_partner = await client.get(
        f"/v1/partner/customers/{ref}/preferences", headers=bearer(partner)
    )
    for answer in (mine, export, at_till, at_partner):
        assert answer.status_code == 200, answer.text
    return {
        "customer": mine.json()["items"][0]["status"],
        "export": export.json()["preferences"][0]["status"],
        "till": at_till.json()["preferences"][0]["status"],
        "partner": at_partner.json()["items"][0]["status"],
    }


async def test_the_catalogues_status_shows_on_every_read_from_the_next_one_on(
    client: httpx.AsyncClient,
    conn: asyncpg.Connection,
    new_customer: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    sku = f"CL-{fresh_word()}"
    card = fresh_card()
    customer = await new_customer(card=card)
    body = {**CHINOS, "product": {**CHINOS["product"], "sku": sku}, "status": "available"}
    await keep(client, customer, body)
    # the till is shown statuses only (not the product): the overlay still applies
    await grant(client, customer, "pos", fields=["attributes"])
    partner, partner_secret = await partner_key(conn)
    await grant(client, customer, f"partner:{partner.partner_id}")
    ref = await reference(client, customer, partner.partner_id)
    _, till = await till_key(conn)

    def imported(status: str) -> None:
        line = {"sku": sku, "name": "Classic Chino", "status": status}
        done = prefs_command(
            settings, "catalogue", "import", str(write_lines(tmp_path / f"{status}.jsonl", [line]))
        )
        assert done.returncode == 0, done.stdout + done.stderr

    seen = await statuses_everywhere(client, customer, card, till, partner_secret, ref)
    assert set(seen.values()) == {"available"}, seen
    imported("discontinued")
    seen = await statuses_everywhere(client, customer, card, till, partner_secret, ref)
    assert set(seen.values()) == {"discontinued"}, seen
    imported("available")
    seen = await statuses_everywhere(client, customer, card, till, partner_secret, ref)
    assert set(seen.values()) == {"available"}, seen
    # what the customer stored is theirs: a product the catalogue does not know keeps it
    stored = await conn.fetchval(
        "SELECT status FROM preferences WHERE customer_id = $1", uuid.UUID(customer.id)
    )
    assert stored == "available"


async def test_a_customer_sets_the_status_only_of_products_the_catalogue_does_not_know(
    client: httpx.AsyncClient, conn: asyncpg.Connection, new_customer: Any
) -> None:
    known_sku, own_sku = f"CL-{fresh_word()}", f"CL-{fresh_word()}"
    await conn.execute(
        """INSERT INTO catalogue_products (sku, name, status)
           VALUES ($1, 'Classic Chino', 'discontinued')""",
        known_sku,
    )
    customer = await new_customer()
    known = await keep(
        client, customer, {**CHINOS, "product": {**CHINOS["product"], "sku": known_sku}}
    )
    own_body = {**CHINOS, "product": {**CHINOS["product"], "sku": own_sku}, "status": "available"}
    own = await keep(client, customer, own_body)
    # each answer says whose word the status is
    assert (known["status"], known["status_source"]) == ("discontinued", "catalogue")
    assert (own["status"], own["status_source"]) == ("available", "customer")
    listed = await client.get("/v1/me/preferences", headers=customer.headers)
    assert {p["id"]: p["status_source"] for p in listed.json()["items"]} == {
        known["id"]: "catalogue",
        own["id"]: "customer",
    }

    def change(preference: dict[str, Any], version: int, **body: Any) -> Any:
        return client.patch(
            f"/v1/me/preferences/{preference['id']}",
            headers={**customer.headers, "If-Match": f'"{version}"'},
            json=body,
        )

    refused = await change(known, known["version"], status="available")
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "catalogue" in refused.json()["detail"]
    stored = await conn.fetchval(
        "SELECT version FROM preferences WHERE preference_id = $1", uuid.UUID(known["id"])
    )
    assert stored == known["version"]  # nothing changed
    # sending back the status it read is no change: accepted, with the rest of the edit
    same = await change(known, known["version"], status="discontinued", note="Still the one.")
    assert same.status_code == 200, same.text
    # naming another SKU the catalogue does not know makes the status the customer's again
    moved = await change(
        known,
        same.json()["version"],
        product={**CHINOS["product"], "sku": f"CL-{fresh_word()}"},
        status="available",
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["status"], moved.json()["status_source"]) == ("available", "customer")
    # the customer's own product: theirs to mark
    marked = await change(own, own["version"], status="discontinued")
    assert marked.status_code == 200, marked.text
    assert (marked.json()["status"], marked.json()["status_source"]) == ("discontinued", "customer")
