"""HTTP for the customer's rights: erasure (DELETE /v1/me) and the export (GET /v1/me/export)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast
from uuid import UUID

from litestar import Controller, delete, get
from litestar.di import NamedDependency
from litestar.response import Stream

from prefs.auth import customer_guard
from prefs.crypto import Vault
from prefs.db import Connection, Pool
from prefs.problems import problems
from prefs.rights import service
from prefs.settings import Settings


class RightsController(Controller):
    path = "/v1/me"
    tags = ["customer"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @delete("/", responses=problems(401, 404, 503))
    async def erase(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
    ) -> None:
        """Erase everything: the data key is destroyed with the rows (crypto-shredding)."""
        await service.erase(conn, vault, customer_id)

    @get("/export", media_type="application/json", responses=problems(401, 404, 503))
    async def export(
        self,
        pool: NamedDependency[Pool],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
    ) -> Stream:
        """Everything held about you, decrypted, in one JSON document (streamed)."""

        async def chunks() -> AsyncIterator[bytes]:
            async with pool.acquire() as conn:
                async for chunk in service.export(
                    cast(Connection, conn), vault, settings.controller, customer_id
                ):
                    yield chunk

        return Stream(
            chunks(),
            media_type="application/json",
            headers={
                "Content-Disposition": 'attachment; filename="prefs-export.json"',
                "Cache-Control": "no-store",
            },
        )
