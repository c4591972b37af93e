"""Shared steps for the export, erasure, key-rotation and retention tests.

Key rotation and restore drills change what every customer in a database is wrapped or indexed
under, so those tests run on databases of their own (on the same server as the session's), each
with its own keyrings, data dir (dev issuer) and app served on a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from prefs import credentials, db
from prefs.auth import DevIssuer
from prefs.crypto import Vault
from prefs.settings import Settings, load
from tests.support.customer import bearer
from tests.support.database import admin, with_database
from tests.support.stores import FROM_HIGH_STREET, HIGH_STREET, in_directory
from tests.support.till import confirm_card

# Found without importing pgserver (whose import warns when XDG_RUNTIME_DIR is unset).
_PGSERVER = importlib.util.find_spec("pgserver")
assert _PGSERVER is not None
assert _PGSERVER.origin is not None
PG_BIN = Path(_PGSERVER.origin).parent / "pginstall" / "bin"
PREFS = Path(sys.executable).parent / "prefs"


def new_key(version: int) -> str:
    """One keyring entry: VERSION:BASE64URLKEY, a fresh 256-bit key."""
    return f"{version}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}"


def fresh_card() -> str:
    """A random 16-digit loyalty card number."""
    return f"{secrets.randbelow(10**15) + 10**15}"


def marker(label: str) -> str:
    """A string nobody else typed, to look for later."""
    return f"{label}-{secrets.token_hex(6)}"


@dataclass
class OwnDatabase:
    """A database of one test's own, with its own keys and dev issuer."""

    url: str
    name: str
    data_dir: Path
    master_keys: str
    index_keys: str

    def settings(
        self, master_keys: str | None = None, index_keys: str | None = None, **extra: str
    ) -> Settings:
        return load(
            {
                "PREFS_DATA_DIR": str(self.data_dir),
                "PREFS_DATABASE_URL": self.url,
                "PREFS_MASTER_KEYS": master_keys or self.master_keys,
                "PREFS_INDEX_KEY": index_keys or self.index_keys,
                **extra,
            }
        )

    def vault(self, master_keys: str | None = None, index_keys: str | None = None) -> Vault:
        return Vault.from_settings(master_keys or self.master_keys, index_keys or self.index_keys)

    @property
    def issuer(self) -> DevIssuer:
        return DevIssuer(self.data_dir / "dev-issuer.pem")

    async def connect(self) -> asyncpg.Connection:
        return await db.connect(self.url)


async def create_database(server_url: str, prefix: str) -> tuple[str, str]:
    """A new, empty database on the server (not migrated); returns (name, url)."""
    name = f"prefs_{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    await admin(server_url, f"CREATE DATABASE {name}")
    return name, with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    await admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.asynccontextmanager
async def own_database(server_url: str, data_dir: Path, prefix: str) -> AsyncIterator[OwnDatabase]:
    """A fresh database migrated to head, with keyrings of its own (v1 of each)."""
    name, url = await create_database(server_url, prefix)
    try:
        await asyncio.to_thread(db.migrate, url)
        conn = await db.connect(url)
        try:
            await in_directory(conn, HIGH_STREET, "High Street")  # reorders' default store
        finally:
            await conn.close()
        yield OwnDatabase(
            url=url, name=name, data_dir=data_dir, master_keys=new_key(1), index_keys=new_key(1)
        )
    finally:
        await drop_database(server_url, name)


async def run_prefs(
    *args: str, database_url: str, data_dir: Path, master_keys: str, index_keys: str, **extra: str
) -> tuple[int, str]:
    """Run the `prefs` command as an operator would; returns (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFS_")}
    env.update(
        PREFS_DATABASE_URL=database_url,
        PREFS_DATA_DIR=str(data_dir),
        PREFS_MASTER_KEYS=master_keys,
        PREFS_INDEX_KEY=index_keys,
        PREFS_LOG_LEVEL="WARNING",
        **extra,
    )
    process = await asyncio.create_subprocess_exec(
        str(PREFS), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, output.decode()


def pg_tool(tool: str, *args: str) -> bytes:
    """Run pg_dump / pg_restore / psql from the PostgreSQL shipped with pgserver."""
    result = subprocess.run(
        [str(PG_BIN / tool), *args], capture_output=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def pg_dump(url: str, *args: str) -> bytes:
    """A dump of one database, as a backup would hold it (plain SQL unless args say otherwise)."""
    return pg_tool(
        "pg_dump", "--no-owner", "--no-privileges", *args, "--dbname", db.asyncpg_dsn(url)
    )


# -- the API, as each kind of caller uses it --------------------------------------------------


@dataclass
class Shopper:
    subject: str
    headers: dict[str, str]
    id: str
    card: str | None = None


async def enrol(
    http: httpx.AsyncClient,
    issuer: DevIssuer,
    card: str | None = None,
    subject: str | None = None,
    till: str | None = None,
) -> Shopper:
    """A new customer; their card, if given, is confirmed at ``till`` (else it stays pending)."""
    subject = subject or f"customer-{uuid.uuid4()}@example.test"
    headers = bearer(issuer.mint(subject))
    response = await http.post("/v1/me", headers=headers, json={"card": card} if card else None)
    assert response.status_code == 201, response.text
    shopper = Shopper(subject=subject, headers=headers, id=response.json()["id"], card=card)
    if card and till:
        await confirm_card(http, till, shopper, card)
    return shopper


def preference(label: str, status: str = "discontinued") -> dict[str, Any]:
    """A preference whose every typed string carries a unique marker."""
    return {
        "product": {
            "sku": marker(f"SKU-{label}"),
            "name": marker(f"Classic Chino {label}"),
            "brand": marker(f"Brand {label}"),
            "category": "trousers",
        },
        "attributes": {"waist": "34", "leg": "34", "colour": marker(f"colour-{label}")},
        "note": marker(f"The old cut, {label}"),
        "status": status,
    }


def typed_strings(body: dict[str, Any]) -> list[str]:
    """The marker strings a preference body carries."""
    product = body["product"]
    return [
        product["sku"],
        product["name"],
        product["brand"],
        body["attributes"]["colour"],
        body["note"],
    ]


async def reorder(
    http: httpx.AsyncClient,
    shopper: Shopper,
    preference_id: str,
    fulfiller: str = FROM_HIGH_STREET,
    key: str | None = None,
) -> dict[str, Any]:
    headers = {**shopper.headers, "Idempotency-Key": key or str(uuid.uuid4())}
    response = await http.post(
        f"/v1/me/preferences/{preference_id}/reorders",
        headers=headers,
        json={"quantity": 1, "fulfiller": fulfiller},
    )
    assert response.status_code == 201, response.text
    placed: dict[str, Any] = response.json()
    return placed


async def look_up(http: httpx.AsyncClient, till_key: str, **body: str) -> httpx.Response:
    return await http.post("/v1/pos/lookup", headers=bearer(till_key), json=body)


async def till(conn: asyncpg.Connection) -> tuple[credentials.Credential, str]:
    return await credentials.create(conn, "pos", "Till 3", store=await in_directory(conn))


async def partner(conn: asyncpg.Connection) -> tuple[credentials.Credential, str]:
    return await credentials.create(
        conn, "partner", f"Tailor {secrets.token_hex(4)}", description="Made-to-order trousers"
    )


async def reference(http: httpx.AsyncClient, shopper: Shopper, partner_id: uuid.UUID | None) -> str:
    """The partner's pairwise reference for the customer, as their consent list shows it."""
    response = await http.get("/v1/me/consents", headers=shopper.headers)
    assert response.status_code == 200, response.text
    [consent] = [c for c in response.json()["items"] if c["audience"] == f"partner:{partner_id}"]
    ref: str = consent["reference"]
    return ref


async def partner_feed(
    http: httpx.AsyncClient, api_key: str, want: int, patience: float = 30
) -> list[dict[str, Any]]:
    """The partner's whole feed from the start, once it holds at least ``want`` reorders.

    A reorder shows once every transaction older than its own has ended, so a busy server may
    hold it back for a moment.
    """
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        items: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200, **({"after": after} if after else {})}
            response = await http.get(
                "/v1/partner/reorders", headers=bearer(api_key), params=params
            )
            assert response.status_code == 200, response.text
            page = response.json()
            items.extend(page["items"])
            if not page["items"]:
                break
            after = page["next"]
        if len(items) >= want or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.05)


async def items(http: httpx.AsyncClient, shopper: Shopper, path: str) -> list[dict[str, Any]]:
    """Every item of one of the customer's lists (preferences, consents, reorders…)."""
    response = await http.get(path, headers=shopper.headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found
