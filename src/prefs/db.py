"""Database lifecycle: the embedded PostgreSQL, the asyncpg pool and migrations."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeAlias
from urllib.parse import urlsplit

import asyncpg
import msgspec

log = logging.getLogger("prefs.db")

Pool = asyncpg.Pool
Connection = asyncpg.Connection
# A fetched row, or a plain mapping standing in for one.
Row: TypeAlias = "asyncpg.Record | Mapping[str, Any]"


def asyncpg_dsn(url: str) -> str:
    """Accept SQLAlchemy-style URLs too (``postgresql+asyncpg://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def sqlalchemy_url(url: str) -> str:
    return "postgresql+asyncpg://" + asyncpg_dsn(url).partition("://")[2]


def embedded_settings() -> dict[str, str]:
    """Server settings for the embedded PostgreSQL that `prefs serve` runs: shared buffers of a
    quarter of the machine's memory, from 128 MB to 2 GB (PostgreSQL's default, 128 MB, holds
    too little of a million customers for the till's lookups to stay in memory)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"shared_buffers": f"{max(128, min(2048, memory // 4 // 2**20))}MB"}


class EmbeddedPostgres:
    """A real PostgreSQL server shipped as a Python package (pgserver), kept under ``pgdata``.

    ``settings`` (sizes or numbers) that differ from the running server's are written with
    ALTER SYSTEM and the server is restarted to take them, so only the first start pays.
    """

    def __init__(self, pgdata: Path, settings: Mapping[str, str] | None = None) -> None:
        self.pgdata = pgdata
        self.settings = dict(settings or {})
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server; returns its connection URL."""
        runtime = self.pgdata.parent / "run"
        runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
        runtime.chmod(0o700)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        self._server = self._attach()
        url = str(self._server.get_uri())
        if self.settings:
            restart_due: bool = asyncio.run(_apply_settings(url, self.settings))
            if restart_due:
                self.restart()
        return url

    def restart(self) -> None:
        """Stop and start the server through pgserver, which then knows the new postmaster
        (and stops it on the way out). A server other processes are attached to keeps running."""
        self._server.cleanup()
        self._server = self._attach()

    def _attach(self) -> Any:
        """pgserver's handle on the server under pgdata, starting it if it is not running."""
        import pgserver

        return pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def _apply_settings(url: str, settings: Mapping[str, str]) -> bool:
    """ALTER SYSTEM the settings (sizes or numbers) that differ from the running server's;
    True when any did (they take effect at the restart)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        differing: list[str] = [
            row["name"]
            for row in await conn.fetch(
                "SELECT name FROM unnest($1::text[], $2::text[]) AS w(name, value)"
                " WHERE pg_size_bytes(current_setting(name)) <> pg_size_bytes(value)",
                list(settings),
                list(settings.values()),
            )
        ]
        for name in differing:
            await conn.execute(f"ALTER SYSTEM SET {name} = '{settings[name]}'")
        return bool(differing)
    finally:
        await conn.close()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + msgspec.json.encode(value),
        decoder=lambda data: msgspec.json.decode(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


def pooler_options(pooler: str) -> dict[str, Any]:
    """asyncpg's options behind ``pooler`` (PREFS_DATABASE_POOLER).

    Behind a pooler in transaction mode a client connection holds a server connection for one
    transaction only, so nothing may outlive one: no named prepared statements (asyncpg's
    statement cache keeps them on the server session), hence no cache. asyncpg still prepares
    each statement, unnamed, and binds it before its Sync, which a pooler keeps on one server.
    """
    return {"statement_cache_size": 0} if pooler == "transaction" else {}


async def create_pool(
    url: str,
    min_size: int,
    max_size: int,
    server_settings: dict[str, str] | None = None,
    *,
    pooler: str = "none",
) -> asyncpg.Pool:
    """A pool whose connections speak jsonb through msgspec.

    ``server_settings`` are sent when a connection starts, which a pooler in transaction mode
    refuses (PgBouncer only passes on a few parameters) and would not keep for the next
    transaction anyway: there, a caller applies its settings with SET LOCAL per transaction.
    """
    if server_settings and pooler == "transaction":
        raise ValueError("behind a transaction pooler, apply server settings with SET LOCAL")
    pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # no reset query on release: an extra round trip per request; the code keeps no session
        # state (only SET LOCAL and transaction-scoped advisory locks)
        reset=_no_reset,
        command_timeout=30,
        max_inactive_connection_lifetime=300,
        server_settings=server_settings,
        **pooler_options(pooler),
    )
    assert pool is not None
    return pool


async def connect(url: str, *, pooler: str = "none") -> asyncpg.Connection:
    """One connection outside the pool (commands and tests)."""
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url), **pooler_options(pooler))
    await _init_connection(conn)
    return conn


def migrations_dir() -> Path:
    """The alembic scripts: shipped inside the package, or beside it in a source checkout."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str, pooler: str = "none") -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = sqlalchemy_url(url)
    config.attributes["pooler"] = pooler
    return config


def run_sql(script: str) -> None:
    """Run a plain-SQL migration script on alembic's asyncpg connection.

    ``op.execute`` goes through a prepared statement, which holds one command; asyncpg's
    simple-query path runs a whole script inside alembic's transaction.
    """
    from alembic import op
    from sqlalchemy.util import await_

    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_(driver.execute(script))


def migrate(url: str, revision: str = "head", *, pooler: str = "none") -> None:
    """Upgrade the schema to ``revision`` (blocking; run it outside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(url, pooler), revision)


def downgrade(url: str, revision: str, *, pooler: str = "none") -> None:
    from alembic import command

    command.downgrade(alembic_config(url, pooler), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None
    return head


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision this release's migrations hold."""
    from alembic.script import ScriptDirectory

    return frozenset(s.revision for s in ScriptDirectory(str(migrations_dir())).walk_revisions())


class Schema(NamedTuple):
    """Where the database's schema stands for this release.

    ``ahead``: a later release migrated it, from this release's head (a rolling deploy: the
    expand/contract rule, docs/migrations.md, keeps it serving this release).
    ``foreign``: a revision neither this release nor its descendants' lineage knows.
    """

    revision: str | None
    state: Literal["head", "behind", "ahead", "foreign"]


# Every release's migrations record, beside alembic's revision, the revisions it descends from
# (migrations/env.py): an older release reads there that a revision it never saw is a later one.
# (each start of `prefs serve` migrates: the lock and the write only when something changes)
HAS_LINEAGE = """
SELECT EXISTS (SELECT FROM pg_attribute
               WHERE attrelid = 'alembic_version'::regclass AND attname = 'lineage')
"""
LINEAGE_COLUMN = "ALTER TABLE alembic_version ADD COLUMN IF NOT EXISTS lineage text[]"
RECORD_LINEAGE = """
UPDATE alembic_version SET lineage = CAST(:lineage AS text[])
WHERE lineage IS DISTINCT FROM CAST(:lineage AS text[])
"""
DESCENDS = "SELECT $1 = ANY(lineage) FROM alembic_version"


async def schema_state(conn: asyncpg.Connection, head: str) -> Schema:
    """The database's revision, and whether it is this release's ``head``, behind or ahead."""
    try:
        current: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return Schema(None, "behind")
    if current == head:
        return Schema(current, "head")
    if current is None or current in known_revisions():
        return Schema(current, "behind")
    try:
        descends = await conn.fetchval(DESCENDS, head)
    except asyncpg.UndefinedColumnError:
        descends = False
    return Schema(current, "ahead" if descends else "foreign")


def record_lineage(connection: Any, script: Any, heads: tuple[str, ...]) -> None:
    """After migrating (in migrations/env.py, on alembic's connection): the revisions the schema's
    revision descends from, itself first, kept in alembic_version for older releases to read."""
    from sqlalchemy import text

    lineage = [s.revision for s in script.iterate_revisions(heads, "base")] if heads else []
    if not connection.execute(text(HAS_LINEAGE)).scalar():
        connection.exec_driver_sql(LINEAGE_COLUMN)
    connection.execute(text(RECORD_LINEAGE), {"lineage": lineage})


class Unreachable(Exception):
    """The database did not take a connection; the message is one line saying why (never the
    URL, which may hold a password)."""


async def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Open one connection and close it, or raise Unreachable naming where and why."""
    where = _host_and_port(url)
    try:
        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=timeout)
    except ConnectionRefusedError:
        raise Unreachable(f"nothing listens at {where} (connection refused)") from None
    except TimeoutError:
        raise Unreachable(f"no answer from {where} within {timeout:g} s") from None
    except asyncpg.PostgresError as error:  # the server's own words: no password in them
        raise Unreachable(f"{where} refused: {str(error).splitlines()[0]}") from None
    except OSError as error:  # an unknown host too (socket.gaierror): "Name or service not known"
        raise Unreachable(
            f"cannot connect to {where} ({error.strerror or type(error).__name__})"
        ) from None
    except (ValueError, asyncpg.InterfaceError):  # their messages may quote the URL
        raise Unreachable("the URL cannot be read as a PostgreSQL connection URL") from None
    await conn.close()


def _host_and_port(url: str) -> str:
    """host:port of a URL for messages, or a plain description when it names none or several."""
    try:
        parts = urlsplit(asyncpg_dsn(url))
        host, port = parts.hostname, parts.port or 5432
    except ValueError:
        return "the database"
    return f"{host}:{port}" if host else "the database"


async def wait_until_reachable(url: str, timeout: float = 30.0) -> None:
    """Retry a connection until the server answers (start-up races with a restarting server)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
        else:
            await conn.close()
            return
