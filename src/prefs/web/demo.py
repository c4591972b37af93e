"""Development only: a demo customer, a demo till key and a demo partner for the first minute."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from prefs import credentials, grants
from prefs.cards import service as cards
from prefs.catalogue import service as catalogue
from prefs.catalogue.schemas import ImportRow
from prefs.crypto import Vault
from prefs.customers import service as customers
from prefs.errors import Conflict
from prefs.preferences import service as preferences
from prefs.preferences.schemas import PreferenceCreate
from prefs.settings import DEV_ISSUER, Settings
from prefs.stores import service as stores

DEMO_SUBJECT = "demo@prefs.example"
DEMO_FILE = "demo.json"
TILL_NAME, TILL_STORE = "Till 1", "0001"
# The demo's stores: the till's own, and two more to pick from when reordering.
DEMO_STORES = [
    ("0001", "Oxford Street", "214 Oxford Street, London W1"),
    ("0002", "Covent Garden", "12 King Street, London WC2"),
    ("0003", "Manchester Arndale", "Market Street, Manchester M4"),
]
PARTNER_NAME = "Stitch & Co. tailors"
PARTNER_DESCRIPTION = (
    "Made-to-order tailors: they cut a discontinued pattern again, in your exact size."
)
HINT = (
    "the till lookup answers 404 until the demo customer lets tills see their preferences: "
    "sign in on the page, open Sharing and share with the store tills (or make a checkout code "
    "under 'At the till' and look that up instead)"
)

# A small catalogue, so that adding a preference on the page finds products ("chino"); its
# SKUs are the demo's own (the tests' fixtures use others, and the tests share a database).
DEMO_CATALOGUE: list[dict[str, Any]] = [
    {
        "sku": "AC-CHINO-CLASSIC",
        "name": "Classic Chino",
        "brand": "Acme",
        "category": "trousers",
        "status": "discontinued",
        "replaced_by": "AC-CHINO-SLIM",
        "attributes": {
            "waist": ["30", "32", "34", "36"],
            "leg": ["30", "32", "34"],
            "colour": ["khaki", "navy", "stone"],
        },
    },
    {
        "sku": "AC-CHINO-SLIM",
        "name": "Slim Chino",
        "brand": "Acme",
        "category": "trousers",
        "status": "available",
        "attributes": {
            "waist": ["28", "30", "32", "34", "36"],
            "leg": ["30", "32", "34"],
            "colour": ["khaki", "navy", "olive"],
        },
    },
    {
        "sku": "AC-CHINO-SHORT",
        "name": "Chino Shorts",
        "brand": "Acme",
        "category": "trousers",
        "status": "available",
        "attributes": {"waist": ["30", "32", "34", "36"]},
    },
    {
        "sku": "AC-OXFORD",
        "name": "Oxford Shirt",
        "brand": "Acme",
        "category": "shirts",
        "status": "available",
        "attributes": {"size": ["S", "M", "L", "XL"], "colour": ["blue", "white", "pink"]},
    },
    {
        "sku": "CK-DESERT-BOOT",
        "name": "Desert Boot",
        "brand": "Clarks",
        "category": "shoes",
        "status": "available",
        "attributes": {"size": ["7", "8", "9", "10", "11", "12"]},
    },
    {
        "sku": "AC-MERINO-SCARF",
        "name": "Merino Scarf",
        "brand": "Acme",
        "category": "accessories",
        "status": "discontinued",
        "attributes": {"colour": ["grey", "navy"]},
    },
]
EXAMPLES: list[dict[str, Any]] = [
    {
        "product": {
            "sku": "AC-CHINO-CLASSIC",
            "name": "Classic Chino",
            "brand": "Acme",
            "category": "trousers",
        },
        "attributes": {"waist": "34", "leg": "34", "colour": "khaki", "fit": "regular"},
        "note": "The old cut, before they changed the pockets.",
        "status": "discontinued",
        "purchases": 6,
        "last_purchased_on": date(2023, 9, 14),
    },
    {
        "product": {
            "sku": "AC-OXFORD",
            "name": "Oxford Shirt",
            "brand": "Acme",
            "category": "shirts",
        },
        "attributes": {
            "size": "L",
            "collar": "42",
            "sleeve": "long",
            "colour": "light blue",
            "fit": "slim",
        },
        "status": "available",
        "purchases": 3,
        "last_purchased_on": date(2025, 3, 2),
    },
    {
        "product": {
            "sku": "CK-DESERT-BOOT",
            "name": "Desert Boot",
            "brand": "Clarks",
            "category": "shoes",
        },
        "attributes": {"size": "11", "width": "wide", "colour": "sand"},
        "note": "Half a size up in winter, for thick socks.",
        "status": "available",
        "purchases": 2,
    },
    {
        "product": {
            "sku": "MR-CREW-L",
            "name": "Merino Crew Jumper",
            "brand": "Fjell",
            "category": "knitwear",
        },
        "attributes": {"size": "L", "colour": "navy"},
        "status": "available",
        "purchases": 1,
    },
]


@dataclass(frozen=True)
class Demo:
    subject: str
    till_key: str | None
    partner_key: str | None
    card: str | None
    partner_id: uuid.UUID | None = None
    hint: str | None = None  # what to do before the till lookup finds the demo customer


LOCK = "SELECT pg_advisory_xact_lock(hashtext('prefs.web.demo'))"
PARTNER_BY_NAME = """
SELECT partner_id FROM partners WHERE name = $1 AND retired_at IS NULL
ORDER BY partner_id LIMIT 1
"""


def _read_keys(path: Path) -> dict[str, str]:
    try:
        kept = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: v for k, v in kept.items() if isinstance(v, str)} if isinstance(kept, dict) else {}


def _write_keys(path: Path, keys: dict[str, str]) -> None:
    """Keys are shown only once, so keep them, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keys, handle, indent=2)
        handle.write("\n")
    os.replace(scratch, path)


async def _stores(conn: asyncpg.Connection) -> None:
    for store_id, name, address in DEMO_STORES:
        try:
            await stores.add(conn, stores.entry(store_id, name, address))
        except Conflict:  # there already (perhaps renamed by the operator: left as it is)
            pass


async def _till_key(conn: asyncpg.Connection, kept: str | None) -> str:
    if kept and await credentials.verify(conn, "pos", kept) is not None:
        return kept
    _, key = await credentials.create(conn, "pos", TILL_NAME, store=TILL_STORE)
    return key


async def _partner_key(conn: asyncpg.Connection, kept: str | None) -> tuple[str, uuid.UUID]:
    if kept:
        credential = await credentials.verify(conn, "partner", kept)
        if credential is not None and credential.partner_id is not None:
            return kept, credential.partner_id
    partner_id = await conn.fetchval(PARTNER_BY_NAME, PARTNER_NAME)
    credential, key = await credentials.create(
        conn, "partner", PARTNER_NAME, partner_id=partner_id, description=PARTNER_DESCRIPTION
    )
    assert credential.partner_id is not None
    return key, credential.partner_id


async def _demo_customer(conn: asyncpg.Connection, vault: Vault, card: str) -> uuid.UUID:
    """The demo customer, enrolled with the example preferences unless they already were."""
    hashes = vault.index.subjects(DEV_ISSUER, DEMO_SUBJECT)
    found = await customers.find_customer_id(conn, hashes)
    if found is not None:
        return found
    profile, _ = await customers.enrol(conn, vault, hashes, card)
    await cards.prove(conn, vault.index, profile.id, card)  # the demo till finds it at once
    for example in EXAMPLES:
        data = msgspec.convert(example, PreferenceCreate)
        await preferences.create_preference(conn, vault, profile.id, data)
    return profile.id


async def ensure_demo(conn: asyncpg.Connection, vault: Vault, settings: Settings) -> Demo | None:
    """Create the demo data once (keys kept under the data dir); None outside development."""
    if not settings.dev_issuer:
        return None
    path = settings.data_dir / DEMO_FILE
    async with conn.transaction():
        await conn.execute(LOCK)
        kept = _read_keys(path)
        await _stores(conn)
        till_key = await _till_key(conn, kept.get("till_key"))
        partner_key, partner_id = await _partner_key(conn, kept.get("partner_key"))
        card = kept.get("card") or "".join(str(secrets.randbelow(10)) for _ in range(16))
        keys = {"till_key": till_key, "partner_key": partner_key, "card": card}
        if keys != kept:
            _write_keys(path, keys)
        customer_id = await _demo_customer(conn, vault, card)
        shared_with_tills = await grants.live_grant(conn, customer_id, grants.POS) is not None
        rows = [(n, msgspec.convert(p, ImportRow)) for n, p in enumerate(DEMO_CATALOGUE, 1)]
        await catalogue.import_rows(conn, vault, rows, catalogue.ImportReport())
    return Demo(
        subject=DEMO_SUBJECT,
        till_key=till_key,
        partner_key=partner_key,
        card=card,
        partner_id=partner_id,
        hint=None if shared_with_tills else HINT,
    )
