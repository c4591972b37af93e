"""Every SQL statement the service sends, collected while tests run (for the cluster check).

``install()`` wraps ``prefs.db.create_pool`` so that each connection of every pool the service
opens (the app's pools, in any server a test starts) reports its statements through asyncpg's
query logger. Statements a test sends itself on ``db.connect`` connections are not collected;
``watch(conn)`` adds a connection on which a test runs the service's jobs and commands.

With ``PREFS_SQL_CAPTURE=<file>``, the session writes every statement collected to that file at
the end (``python -m tests.support.sql_capture <file>`` checks it: CI can run the whole suite
this way).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from prefs import db

STATEMENTS: dict[str, int] = {}  # statement text -> times seen (insertion ordered)
_SEPARATOR = "\n-- statement --\n"


def _record(query: Any) -> None:
    STATEMENTS[query.query] = STATEMENTS.get(query.query, 0) + 1


def watch(conn: asyncpg.Connection) -> asyncpg.Connection:
    """Collect what ``conn`` sends from now on."""
    conn.add_query_logger(_record)
    return conn


def install() -> None:
    """Collect the statements of every pool created from now on."""
    create_pool: Callable[..., Any] = db.create_pool
    if getattr(create_pool, "captures", False):
        return

    async def capturing_pool(*args: Any, **kwargs: Any) -> asyncpg.Pool:
        pool = await create_pool(*args, **kwargs)
        pool._init = _watching(pool._init)  # applies to every connection the pool opens later
        for holder in pool._holders:  # and to those it opened already
            if holder._con is not None:
                watch(holder._con)
        return pool

    capturing_pool.captures = True  # type: ignore[attr-defined]
    db.create_pool = capturing_pool  # type: ignore[assignment]


def _watching(init: Callable[..., Any] | None) -> Callable[..., Any]:
    async def init_and_watch(conn: asyncpg.Connection) -> None:
        if init is not None:
            await init(conn)
        watch(conn)

    return init_and_watch


def write(path: str | Path) -> None:
    Path(path).write_text(_SEPARATOR.join(STATEMENTS))


def read(path: str | Path) -> list[str]:
    return [s for s in Path(path).read_text().split(_SEPARATOR) if s.strip()]


if __name__ == "__main__":
    from tests.support.distribution import on_a_cluster, report

    found = report(on_a_cluster(read(sys.argv[1])))
    print("\n".join(found) or "every statement is single-shard, co-located or allowed")
    sys.exit(1 if found else 0)
