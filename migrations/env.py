"""Alembic environment: plain-SQL revisions run through the asyncpg driver."""

import asyncio
import uuid
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from prefs.db import record_lineage

# Several instances starting at once each migrate (`prefs serve` does): the first takes this lock
# and the others wait for its commit, then find the schema at head. A transaction-scoped lock, so
# it holds through PgBouncer in transaction mode too; the whole run is that one transaction.
LOCK = "SELECT pg_advisory_xact_lock(hashtext('prefs.migrate'))"


def _run(connection: Connection) -> None:
    connection.exec_driver_sql(LOCK)  # begins the run's transaction, which alembic then joins
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    # what the schema's revision descends from, for older releases serving beside this one
    record_lineage(connection, context.script, context.get_context().get_current_heads())


def _connect_args() -> dict[str, Any]:
    """Behind a pooler in transaction mode (PREFS_DATABASE_POOLER=transaction) a prepared
    statement must not outlive its transaction nor meet another client's of the same name on a
    shared server connection: no caches, and names no other client picks."""
    if context.config.attributes.get("pooler") != "transaction":
        return {}
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__prefs_migration_{uuid.uuid4().hex}__",
    }


async def _main() -> None:
    engine = create_async_engine(
        context.config.attributes["database_url"], poolclass=NullPool, connect_args=_connect_args()
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("prefs migrations run online only: use `prefs migrate`")
asyncio.run(_main())
