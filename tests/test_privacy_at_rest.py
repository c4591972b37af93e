"""Nothing personal in plaintext at rest: a database dump holds none of what customers typed."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import secrets
import subprocess
import uuid
from pathlib import Path

import pytest

from prefs import db
from tests.support.customer import bearer

# pgserver's own pg_dump (16) dumps both the embedded server and an external 15. Located without
# importing pgserver, whose import wants a runtime directory that only EmbeddedPostgres sets up.
_PGSERVER = importlib.util.find_spec("pgserver")
assert _PGSERVER is not None
assert _PGSERVER.origin is not None
PG_DUMP = Path(_PGSERVER.origin).parent / "pginstall" / "bin" / "pg_dump"


def pg_dump(url: str) -> str:
    """A plain-text dump of one database, data and schema, as an operator's backup would hold it."""
    result = subprocess.run(
        [str(PG_DUMP), "--no-owner", "--no-privileges", "--dbname", db.asyncpg_dsn(url)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def encodings(marker: str) -> set[str]:
    """The ways a string could show up in a dump: as text, as bytea hex, inside JSON, as base64."""
    raw = marker.encode()
    return {
        marker,
        marker.lower(),
        raw.hex(),
        json.dumps(marker)[1:-1],
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def copy_block(dump: str, table: str) -> list[str]:
    """The data rows of one table's COPY block."""
    match = re.search(rf"^COPY public\.{table} \(.*?\) FROM stdin;\n(.*?)^\\\.$", dump, re.M | re.S)
    assert match, f"no COPY block for {table} in the dump"
    return match.group(1).splitlines()


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(5).upper()


async def test_a_database_dump_holds_none_of_the_strings_customers_typed(
    client, issuer, database, settings, tag
):
    subject = f"tall.customer.{tag.lower()}@example-mail.test"
    headers = bearer(issuer.mint(subject))
    card = "".join(secrets.choice("0123456789") for _ in range(16))
    markers = {
        "product name": f"Classicchino{tag}Name",
        "sku": f"SKU{tag}Marker",
        "brand": f"Brandmark{tag}Acme",
        "category": f"Categorymark{tag}",
        "attribute value": f"Khakimarker{tag}Colour",
        "second attribute value": f"Waist{tag}Thirtyfour",
        "note": f"Notemarker{tag} the old cut, before they changed the pockets",
        "edited note": f"Editednote{tag}Pockets",
        "non-ASCII note": f"Größe{tag}Überlänge",
    }

    enrolled = await client.post(
        "/v1/me", headers=headers, json={"card": f"{card[:4]} {card[4:8]} {card[8:]}"}
    )
    assert enrolled.status_code == 201, enrolled.text
    customer_id = enrolled.json()["id"]
    preference_ids = []
    for n in range(3):
        created = await client.post(
            "/v1/me/preferences",
            headers=headers,
            json={
                "product": {
                    "sku": markers["sku"],
                    "name": markers["product name"],
                    "brand": markers["brand"],
                    "category": markers["category"],
                },
                "attributes": {
                    "colour": markers["attribute value"],
                    "waist": markers["second attribute value"],
                },
                "note": markers["note"] if n != 2 else markers["non-ASCII note"],
                "status": "discontinued",
            },
        )
        assert created.status_code == 201, created.text
        preference_ids.append(created.json()["id"])
    edited = await client.patch(
        f"/v1/me/preferences/{preference_ids[0]}",
        headers={**headers, "If-Match": "*"},
        json={"note": markers["edited note"]},
    )
    assert edited.status_code == 200, edited.text
    # what was stored comes back through the API
    listed = (await client.get("/v1/me/preferences", headers=headers)).json()["items"]
    assert {p["note"] for p in listed} == {
        markers["edited note"],
        markers["note"],
        markers["non-ASCII note"],
    }
    assert (await client.get("/v1/me", headers=headers)).json()["card"] == card

    dump = pg_dump(database.url)

    # The dump is a real one: the rows of this customer are in it.
    rows = copy_block(dump, "preferences")
    for preference_id in preference_ids:
        assert any(preference_id in row for row in rows), (
            "the preferences table is missing from the dump"
        )
    assert any(customer_id in row for row in copy_block(dump, "customers"))
    assert any(customer_id in row for row in copy_block(dump, "card_claims"))  # not confirmed
    assert any(customer_id in row for row in copy_block(dump, "customer_subjects"))

    secrets_at_rest = {
        **markers,
        "card": card,
        "subject": subject,
        "subject local part": subject.split("@")[0],
    }
    for what, value in secrets_at_rest.items():
        for form in encodings(value):
            assert form not in dump, f"the {what} is in the dump as {form!r}"
    # nor the unchanging part of every marker (the tag), in any form
    for form in encodings(tag) | encodings(tag.lower()):
        assert form not in dump, f"a marker tag is in the dump as {form!r}"
    # the card is not there with its separators either
    assert f"{card[:4]} {card[4:8]}" not in dump
    # and no key that could read the rest
    for keyring in (settings.master_keys, settings.index_keys):
        for entry in keyring.split(","):
            text = entry.split(":", 1)[1].strip()
            key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            for form in (text.rstrip("="), key.hex(), base64.b64encode(key).decode().rstrip("=")):
                assert form not in dump, "a key is in the dump"


async def test_the_dump_check_would_see_plaintext_if_it_were_there(database, conn, tag):
    """The detector itself: a bytea and a text column holding a marker are both found."""
    marker = f"Canary{tag}Marker"
    table = f"canary_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE TABLE {table} (t text, b bytea)")
    try:
        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", marker, marker.encode())
        dump = pg_dump(database.url)
        rows = copy_block(dump, table)
        assert len(rows) == 1
        assert marker in dump
        assert marker.encode().hex() in dump
    finally:
        await conn.execute(f"DROP TABLE {table}")
