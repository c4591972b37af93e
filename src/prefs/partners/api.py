"""HTTP for the partner directory customers choose from: GET /v1/partners."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from prefs.auth import customer_guard
from prefs.db import Connection
from prefs.errors import problems
from prefs.partners import service
from prefs.partners.schemas import PartnerDirectory


class PartnersController(Controller):
    path = "/v1/partners"
    tags = ["partners"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(401, 503))
    async def directory(self, conn: NamedDependency[Connection]) -> PartnerDirectory:
        """The partners a customer can grant consent to."""
        return PartnerDirectory(items=await service.directory(conn))
