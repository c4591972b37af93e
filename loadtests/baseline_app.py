"""The benchmark's bare baseline: Litestar + asyncpg, one primary-key SELECT, nothing else.

    BASELINE_DATABASE_URL=postgresql://... uv run uvicorn baseline_app:create_app --factory \
        --app-dir loadtests --workers 2 --no-access-log --log-level warning

GET /baseline/preferences/{customer_id}/{preference_id} answers one row of ``preferences`` (the
same data the till lookup reads). No key check, consent, decryption or access-log write.
BASELINE_POOL_RESET=off swaps asyncpg's reset-on-release query for nothing, to show its cost.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException

SELECT = """
SELECT customer_id, preference_id, rank, status, purchases_ct, version,
       sealed, product_ct, attributes_ct, note_ct, created_at, updated_at
FROM preferences WHERE customer_id = $1 AND preference_id = $2
"""


class Row(msgspec.Struct):
    customer_id: UUID
    preference_id: UUID
    rank: int
    status: str
    purchases_ct: bytes | None
    version: int
    sealed: bytes | None
    product_ct: bytes | None
    attributes_ct: bytes | None
    note_ct: bytes | None
    created_at: datetime
    updated_at: datetime


@get("/baseline/preferences/{customer_id:uuid}/{preference_id:uuid}")
async def read_preference(state: State, customer_id: UUID, preference_id: UUID) -> Row:
    """One preference row by primary key."""
    async with state.pool.acquire() as conn:
        row = await conn.fetchrow(SELECT, customer_id, preference_id)
    if row is None:
        raise NotFoundException()
    return Row(**dict(row))


async def _no_reset(_: asyncpg.Connection) -> None:
    """Skip the reset query on release (the endpoint changes no session state)."""


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    reset = _no_reset if os.environ.get("BASELINE_POOL_RESET", "on") == "off" else None
    app.state.pool = await asyncpg.create_pool(
        os.environ["BASELINE_DATABASE_URL"], min_size=2, max_size=16, reset=reset
    )
    try:
        yield
    finally:
        await app.state.pool.close()


def create_app() -> Litestar:
    return Litestar(route_handlers=[read_preference], lifespan=[_lifespan])
