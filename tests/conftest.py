"""Test harness: a real PostgreSQL (embedded, or PREFS_TEST_DATABASE_URL), a real HTTP server.

The service runs in a uvicorn server on a background thread and the tests talk to it over a real
TCP socket with httpx, as any client would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from prefs import db
from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.crypto import Vault
from prefs.settings import Settings, load


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Database:
    url: str
    server_url: str
    name: str
    embedded: db.EmbeddedPostgres | None


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    base, _, query = url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    return f"{prefix}/{name}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A fresh database, migrated to head, on the configured server or an embedded one."""
    external = os.environ.get("PREFS_TEST_DATABASE_URL")
    embedded = None
    if external:
        server_url = external
    else:
        embedded = db.EmbeddedPostgres(tmp_path_factory.mktemp("pgdata") / "pg")
        server_url = embedded.start()
    name = f"prefs_test_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_admin(server_url, f"CREATE DATABASE {name}"))
    url = with_database(server_url, name)
    db.migrate(url)
    yield Database(url=url, server_url=server_url, name=name, embedded=embedded)
    asyncio.run(_admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    if embedded is not None:
        embedded.stop()


@pytest.fixture(scope="session")
def settings(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("prefs-data")
    return load({"PREFS_DATA_DIR": str(data_dir), "PREFS_DATABASE_URL": database.url})


@pytest.fixture(scope="session")
def vault(settings: Settings) -> Vault:
    return Vault.from_settings(settings.master_keys, settings.index_keys)


class LiveServer:
    """The app under uvicorn on a thread, on a real socket."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def conn(database: Database) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection, for looking at what is stored."""
    connection = await db.connect(database.url)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def issuer(settings: Settings) -> DevIssuer:
    return DevIssuer(settings.dev_issuer_key_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class CustomerSession:
    subject: str
    headers: dict[str, str]
    id: str


@pytest.fixture
def new_customer(client: httpx.AsyncClient, issuer: DevIssuer) -> Any:
    """Factory: enrol a fresh customer and return their auth headers and id."""

    async def make(card: str | None = None) -> CustomerSession:
        subject = f"customer-{uuid.uuid4()}@example.test"
        headers = bearer(issuer.mint(subject))
        body = {"card": card} if card else None
        response = await client.post("/v1/me", headers=headers, json=body)
        assert response.status_code == 201, response.text
        return CustomerSession(subject=subject, headers=headers, id=response.json()["id"])

    return make


CHINOS: dict[str, Any] = {
    "product": {"sku": "CL-CHINO-3434", "name": "Classic Chino", "brand": "Acme", "category": "trousers"},
    "attributes": {"waist": "34", "leg": "34", "colour": "khaki", "fit": "regular"},
    "note": "The old cut, before they changed the pockets.",
    "status": "discontinued",
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
