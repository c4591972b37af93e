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

from prefs import credentials, db
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
    # One token drives hundreds of requests a minute in the suite: the customer rate limit is
    # tested on a server of its own (test_customer_rate_limit.py).
    return load(
        {
            "PREFS_DATA_DIR": str(data_dir),
            "PREFS_DATABASE_URL": database.url,
            "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": "1000000",
        }
    )


@pytest.fixture(scope="session")
def vault(settings: Settings) -> Vault:
    return Vault.from_settings(settings.master_keys, settings.index_keys)


class LiveServer:
    """The app under uvicorn on a thread, on a real socket."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
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


async def confirm_card(client: httpx.AsyncClient, till: str, customer: Any, card: str) -> None:
    """The customer shows a checkout code while ``till`` scans the card; the code is then ended."""
    code = await client.post(
        "/v1/me/checkout-codes", headers=customer.headers, json={"fields": ["product"]}
    )
    assert code.status_code == 201, code.text
    confirmed = await client.post(
        "/v1/pos/cards/confirm",
        headers=bearer(till),
        json={"card": card, "code": code.json()["code"]},
    )
    assert confirmed.status_code == 204, confirmed.text
    ended = await client.delete(
        f"/v1/me/checkout-codes/{code.json()['id']}", headers=customer.headers
    )
    assert ended.status_code == 204, ended.text


CHINOS: dict[str, Any] = {
    "product": {
        "sku": "CL-CHINO-3434",
        "name": "Classic Chino",
        "brand": "Acme",
        "category": "trousers",
    },
    "attributes": {"waist": "34", "leg": "34", "colour": "khaki", "fit": "regular"},
    "note": "The old cut, before they changed the pockets.",
    "status": "discontinued",
}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


# --- No outbound traffic (issue 7, item 5) -----------------------------------------------------
# The service runs in this process (the `server` thread), so an audit hook installed when this
# file is imported sees every socket it connects, every name it looks up and every URL urllib
# fetches. Event loops written in C (uvloop, which uvicorn picks) connect without raising audit
# events, so the process's open connections are also sampled: whenever a socket object is made
# off the main thread (uvloop wraps each new connection in one) and every 0.2 s. At the end of
# the session every destination must be the test database, loopback (test servers and `prefs
# serve` subprocesses), a PostgreSQL unix socket or the identity provider's key set as fetched
# by PyJWKClient; otherwise the run fails. tests/test_no_outbound.py checks the same midway.

import contextlib as _contextlib  # noqa: E402
import ipaddress as _ipaddress  # noqa: E402
import sys as _sys  # noqa: E402
import types as _types  # noqa: E402
from urllib.parse import urlsplit as _urlsplit  # noqa: E402


@dataclass(frozen=True)
class SocketUse:
    """One destination the test process reached for (deduplicated)."""

    event: str  # socket.connect, socket.sendto, socket.getaddrinfo, urllib.Request, sampled
    host: str  # an IP address, a host name, or a unix socket path
    port: int | None
    via_jwks: bool  # made by PyJWKClient fetching the configured key set


_AUDITED_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.sendto",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "urllib.Request",
    }
)
_in_audit = threading.local()


def _from_jwks_client() -> bool:
    frame: Any = _sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith("jwt/jwks_client.py"):
            return True
        frame = frame.f_back
    return False


def _sample_connections(uses: set[SocketUse]) -> None:
    """Record the remote end of every connected inet socket this process holds right now."""
    import psutil  # a declared test dependency: without it this audit would see nothing

    for connection in psutil.Process().net_connections(kind="inet"):
        if connection.raddr:
            uses.add(SocketUse("sampled", connection.raddr.ip, connection.raddr.port, False))


def _destination(event: str, args: tuple[Any, ...]) -> tuple[str, int | None]:
    address: Any = args[1] if event in ("socket.connect", "socket.sendto") else args[0]
    if event == "urllib.Request":
        parts = _urlsplit(str(address))
        host, port = parts.hostname or "", parts.port
    elif event == "socket.getaddrinfo":
        host, port = address, args[1]
    elif isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    else:
        host, port = address, None
    if isinstance(host, bytes):
        host = host.decode("utf-8", "replace")
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    if isinstance(port, str):
        port = int(port) if port.isdigit() else None
    return str(host), port


def _audit_hook(uses: set[SocketUse]) -> Any:
    def record_socket_use(event: str, args: tuple[Any, ...]) -> None:
        if (event not in _AUDITED_EVENTS and event != "socket.__new__") or getattr(
            _in_audit, "active", False
        ):
            return
        _in_audit.active = True
        try:
            with _contextlib.suppress(Exception):  # never break the call being watched
                if event != "socket.__new__":
                    uses.add(SocketUse(event, *_destination(event, args), _from_jwks_client()))
                elif threading.current_thread() is not threading.main_thread():
                    _sample_connections(uses)
        finally:
            _in_audit.active = False

    return record_socket_use


def _sample_periodically(uses: set[SocketUse], stop: threading.Event) -> None:
    while not stop.wait(0.2):
        _in_audit.active = True
        try:
            with _contextlib.suppress(Exception):
                _sample_connections(uses)
        finally:
            _in_audit.active = False


# Installed once per process, even if this file were imported under a second name.
_outbound = _sys.modules.get("_prefs_outbound_audit")
if _outbound is None:
    _outbound = _types.ModuleType("_prefs_outbound_audit")
    _outbound.uses = set()
    _outbound.stop = threading.Event()
    _sys.modules["_prefs_outbound_audit"] = _outbound
    _sys.addaudithook(_audit_hook(_outbound.uses))
    threading.Thread(
        target=_sample_periodically,
        args=(_outbound.uses, _outbound.stop),
        name="outbound-sampler",
        daemon=True,
    ).start()
SOCKET_USES: set[SocketUse] = _outbound.uses


def _database_endpoints() -> set[tuple[str, int]]:
    """The external test database's host and port, by name and by address."""
    url = os.environ.get("PREFS_TEST_DATABASE_URL")
    parts = _urlsplit(db.asyncpg_dsn(url)) if url else None
    if parts is None or not parts.hostname:
        return set()
    port = parts.port or 5432
    endpoints = {(parts.hostname, port)}
    with _contextlib.suppress(OSError):
        endpoints |= {(str(info[4][0]), port) for info in socket.getaddrinfo(parts.hostname, port)}
    return endpoints


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def outbound_violations(uses: set[SocketUse] | None = None) -> list[SocketUse]:
    """Every recorded destination that is not the database, loopback or the JWKS fetch."""
    database = _database_endpoints()
    database_hosts = {host for host, _ in database}
    wrong = []
    for use in sorted(set(SOCKET_USES) if uses is None else uses, key=repr):
        if use.host.startswith(("/", "\0")):  # a unix socket: only PostgreSQL's
            allowed = Path(use.host).name.startswith(".s.PGSQL.")
        else:
            looked_up = use.event.startswith("socket.get")
            allowed = (
                use.via_jwks
                or _is_loopback(use.host)
                or (use.host, use.port) in database
                or (looked_up and use.host in database_hosts)
            )
        if not allowed:
            wrong.append(use)
    return wrong


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if anything in this process reached beyond the database and loopback."""
    _outbound.stop.set()
    _sample_connections(SOCKET_USES)
    wrong = outbound_violations()
    if not wrong:
        return
    lines = ["outbound traffic: the test process reached beyond the database and loopback:"]
    lines += [f"  {use.event} {use.host}:{use.port}" for use in wrong]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line, red=True)
        else:
            print(line, file=_sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API holds an event loop on the main thread while
    it runs, which the session-scoped asyncio fixtures of the other tests must not meet."""
    items.sort(key=lambda item: "tests/browser/" in item.nodeid.replace("\\", "/"))
