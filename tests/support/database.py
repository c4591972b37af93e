"""The suite's databases: the session's, and others on the same server."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from prefs import db


@dataclass
class Database:
    url: str
    server_url: str
    name: str
    embedded: db.EmbeddedPostgres | None


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
