"""HTTP for the access log: GET /v1/me/access-log."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from prefs.access_log import service
from prefs.access_log.schemas import AccessLogPage
from prefs.auth import customer_guard
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.http import STRING_WHEN_SENT
from prefs.problems import problems

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Disclosures per page")]
After = Annotated[
    str | None,
    QueryParameter(
        max_length=200, description="The `next` of the previous page", schema_extra=STRING_WHEN_SENT
    ),
]


class AccessLogController(Controller):
    path = "/v1/me/access-log"
    tags = ["access log"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(400, 401, 404, 503))
    async def read(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        limit: Limit = 50,
        after: After = None,
    ) -> AccessLogPage:
        """Every disclosure to anyone but you, newest first."""
        return await service.page(conn, vault, customer_id, limit, after)
