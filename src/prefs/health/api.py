"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from prefs import db
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
    async def ready(self, state: State) -> Response[Health]:
        """The database answers and its schema is at the head revision."""
        pool: Any = state.pool
        try:
            async with pool.acquire(timeout=2) as conn:
                at_head = await db.schema_at_head(conn, state.schema_head)
        except DATABASE_DOWN:
            return Response(
                Health(status="unavailable", database="unreachable"),
                status_code=503,
                headers={"Retry-After": "2"},
            )
        if not at_head:
            return Response(
                Health(status="unavailable", database="ok", schema="behind"), status_code=503
            )
        return Response(Health(status="ok", database="ok", schema="head"))


class MetricsController(Controller):
    path = "/metrics"
    tags = ["operations"]

    @get("/", media_type="text/plain")
    async def metrics(self, state: State) -> Response[bytes]:
        """Prometheus metrics: request latency per route, statuses, pool use, lookups, disclosures."""
        body, content_type = render_metrics(getattr(state, "pool", None))
        return Response(body, media_type=content_type)
