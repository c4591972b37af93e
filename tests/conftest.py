"""Test harness: a real PostgreSQL (embedded, or PREFS_TEST_DATABASE_URL), a real HTTP server.

The service runs in a uvicorn server on a background thread and the tests talk to it over a real
TCP socket with httpx, as any client would. This file holds fixtures and pytest hooks only: the
servers, databases and each actor's steps are in tests/support/, which tests import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from prefs import credentials, db
from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.crypto import Vault
from prefs.settings import LAYOUTS, Settings, load
from tests.support import socket_audit, sql_capture
from tests.support.customer import CustomerSession, bearer
from tests.support.database import Database, admin, with_database
from tests.support.pgbouncer import MISSING, PgBouncer, pgbouncer_path
from tests.support.servers import LiveServer
from tests.support.stores import HIGH_STREET, in_directory
from tests.support.till import confirm_card

socket_audit.install()  # before any test runs: it records from the first socket on
sql_capture.install()  # every pool the service opens reports its statements (cluster check)


@pytest.fixture(scope="session")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """A fresh database, migrated to head, on the configured server or an embedded one."""
    layout = _layout()
    external = os.environ.get("PREFS_TEST_DATABASE_URL")
    embedded = None
    if external:
        server_url = external
    else:
        embedded = db.EmbeddedPostgres(tmp_path_factory.mktemp("pgdata") / "pg")
        server_url = embedded.start()
    name = f"prefs_test_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(admin(server_url, f"CREATE DATABASE {name}"))
    url = with_database(server_url, name)
    with _pooler(server_url) as bouncer:
        app_url = bouncer.url(url) if bouncer else url
        pooler = "transaction" if bouncer else "none"
        db.migrate(app_url, pooler=pooler)  # as `prefs serve` would, through the pooler
        asyncio.run(_add_high_street(url))
        yield Database(
            url=url,
            server_url=server_url,
            name=name,
            embedded=embedded,
            app_url=app_url,
            pooler=pooler,
            layout=layout,
        )
    asyncio.run(admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    if embedded is not None:
        embedded.stop()


@contextlib.contextmanager
def _pooler(server_url: str) -> Iterator[PgBouncer | None]:
    """PREFS_TEST_POOLER=pgbouncer: the service under test reaches the database through a real
    PgBouncer in transaction mode (PREFS_TEST_POOLER_SIZE server connections, 4 by default)."""
    wanted = os.environ.get("PREFS_TEST_POOLER", "")
    if wanted in ("", "none"):
        yield None
        return
    if wanted != "pgbouncer":
        raise pytest.UsageError("PREFS_TEST_POOLER must be 'pgbouncer' or unset")
    if pgbouncer_path() is None:
        raise pytest.UsageError(f"PREFS_TEST_POOLER=pgbouncer: {MISSING}")
    with PgBouncer(server_url, int(os.environ.get("PREFS_TEST_POOLER_SIZE", "4"))) as bouncer:
        yield bouncer


def _layout() -> str:
    """PREFS_TEST_LAYOUT=distributed: the services under test send a cluster's statements
    (PREFS_DATABASE_LAYOUT=distributed: the till's lookup routed first) to the one database."""
    wanted = os.environ.get("PREFS_TEST_LAYOUT", "") or "single"
    if wanted not in LAYOUTS:
        raise pytest.UsageError("PREFS_TEST_LAYOUT must be one of " + ", ".join(LAYOUTS))
    return wanted


async def _add_high_street(url: str) -> None:
    connection = await db.connect(url)
    try:
        await in_directory(connection, HIGH_STREET, "High Street")
        await in_directory(connection, "card-desk", "Service desk")
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def settings(database: Database, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data_dir = tmp_path_factory.mktemp("prefs-data")
    # One token drives hundreds of requests a minute in the suite: the customer rate limit is
    # tested on a server of its own (test_customer_rate_limit.py).
    return load(
        {
            "PREFS_DATA_DIR": str(data_dir),
            **database.app_env,
            "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": "1000000",
            # The session's server runs no expiry or purge of its own: tests that check what a
            # read leaves untouched would race it. Tests run those jobs themselves
            # (test_retention.py serves one with its periodic purge on).
            "PREFS_EXPIRY_INTERVAL": "86400",
            "PREFS_PURGE_INTERVAL": "86400",
        }
    )


@pytest.fixture(scope="session")
def vault(settings: Settings) -> Vault:
    return Vault.from_settings(settings.master_keys, settings.index_keys)


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


@pytest.fixture(scope="session")
async def card_desk(database: Database) -> str:
    """A till key at a store's service desk, where test customers confirm the cards they add."""
    connection = await db.connect(database.url)
    try:
        _, key = await credentials.create(connection, "pos", "Service desk", store="card-desk")
    finally:
        await connection.close()
    return key


@pytest.fixture
def new_customer(client: httpx.AsyncClient, issuer: DevIssuer, card_desk: str) -> Any:
    """Factory: enrol a fresh customer and return their auth headers and id.

    A card given is confirmed at the card desk (findable at tills) unless ``confirmed=False``.
    """

    async def make(card: str | None = None, confirmed: bool = True) -> CustomerSession:
        subject = f"customer-{uuid.uuid4()}@example.test"
        headers = bearer(issuer.mint(subject))
        body = {"card": card} if card else None
        response = await client.post("/v1/me", headers=headers, json=body)
        assert response.status_code == 201, response.text
        customer = CustomerSession(subject=subject, headers=headers, id=response.json()["id"])
        if card and confirmed:
            await confirm_card(client, card_desk, customer, card)
        return customer

    return make


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything in this process reached beyond the database and loopback."""
    if capture := os.environ.get("PREFS_SQL_CAPTURE"):
        sql_capture.write(capture)
    wrong = socket_audit.finish()
    if not wrong:
        return
    lines = ["outbound traffic: the test process reached beyond the database and loopback:"]
    lines += [f"  {use.event} {use.host}:{use.port}" for use in wrong]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line, file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API holds an event loop on the main thread while
    it runs, which the session-scoped asyncio fixtures of the other tests must not meet."""
    items.sort(key=lambda item: "tests/browser/" in item.nodeid.replace("\\", "/"))


@pytest.fixture(params=[False, True], ids=["single", "distributed"])
def routed(request: pytest.FixtureRequest) -> bool:
    """Whether a test's own lookup batcher routes its lookups (PREFS_DATABASE_LAYOUT=distributed):
    a test taking it runs with both layouts' statements."""
    routed: bool = request.param
    return routed
