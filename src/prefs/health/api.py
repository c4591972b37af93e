"""Liveness and readiness."""

from __future__ import annotations

from typing import cast

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec

from prefs import db
from prefs.db import Connection, Pool
from prefs.errors import DATABASE_DOWN
from prefs.observability import render_metrics


class Health(msgspec.Struct):
    status: str
    database: str | None = None
    schema: str | None = None


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]

    @get("/live")
    async def live(self) -> Health:
        """The process answers."""
        return Health(status="ok")

    @get("/ready", responses={503: ResponseSpec(Health, description="Not ready")})
    async def ready(
        self, pool: NamedDependency[Pool], schema_head: NamedDependency[str]
    ) -> Response[Health]:
        """The database answers and its schema is at this release's head revision, or at a later
        release's (schema "ahead": during a rolling deploy both releases serve)."""
        try:
            async with pool.acquire(timeout=2) as conn:
                schema = await db.schema_state(cast(Connection, conn), schema_head)
        except DATABASE_DOWN:
            return Response(
                Health(status="unavailable", database="unreachable"),
                status_code=503,
                headers={"Retry-After": "2"},
            )
        if schema.state in ("behind", "foreign"):
            return Response(
                Health(status="unavailable", database="ok", schema=schema.state), status_code=503
            )
        return Response(Health(status="ok", database="ok", schema=schema.state))


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get("/", media_type="text/plain")
    async def metrics(self, pool: NamedDependency[Pool]) -> Response[bytes]:
        """Prometheus metrics: request latency per route, statuses, pool use, lookups, disclosures."""
        body, content_type = render_metrics(pool)
        return Response(body, media_type=content_type)
