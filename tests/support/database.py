"""The suite's databases: the session's, and others on the same server."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from prefs import db


@dataclass
class Database:
    url: str  # straight to PostgreSQL: the tests' own connections (setup, looking at rows)
    server_url: str
    name: str
    embedded: db.EmbeddedPostgres | None
    # what the service under test is given: through PgBouncer when PREFS_TEST_POOLER=pgbouncer
    app_url: str = ""
    pooler: str = "none"
    layout: str = "single"  # PREFS_TEST_LAYOUT: the tables' layout the service is told of

    @property
    def app_env(self) -> dict[str, str]:
        """The settings that point a service under test at this database."""
        return {
            "PREFS_DATABASE_URL": self.app_url or self.url,
            "PREFS_DATABASE_POOLER": self.pooler,
            "PREFS_DATABASE_LAYOUT": self.layout,
        }


async def admin(url: str, sql: str) -> None:
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
