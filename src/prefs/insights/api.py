"""HTTP for merchandising insights: GET /v1/insights/discontinued-demand."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency

from prefs.auth import api_key_guard
from prefs.credentials import Credential
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.insights import service
from prefs.insights.schemas import DiscontinuedDemand
from prefs.problems import problems
from prefs.settings import Settings


class InsightsController(Controller):
    path = "/v1/insights"
    tags = ["insights"]
    guards = [api_key_guard("insights")]
    security = [{"api_key": []}]

    @get("/discontinued-demand", responses=problems(401, 429, 503))
    async def discontinued_demand(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        credential: NamedDependency[Credential],
    ) -> DiscontinuedDemand:
        """Per discontinued product and size, how many opted-in customers want it again: the
        day's release, with noisy counts (ε-differentially private), groups under k withheld."""
        await service.count_read(conn, credential.id, settings.insights_reads_per_day)
        return await service.discontinued_demand(
            conn, vault, settings.k_anonymity, settings.insights_epsilon
        )
