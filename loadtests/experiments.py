"""Patched copies of the service for the benchmark's experiments (never used in production).

Each variant patches this process before the app is built, to measure a change to src/ without
making it there. bench.py serves them next to the real `prefs serve`:

    uv run python loadtests/bench.py --variant no-metrics --variant async-commit

PREFS_VARIANTS (comma-separated) selects them:
  plain         nothing patched (the same app as `prefs serve`, started the same way)
  no-metrics    no observability middleware (request id, Prometheus counters): its cost, as an
                upper bound
  async-commit  synchronous_commit=off on every pool: shows what the WAL flush costs. NOT a
                proposal: an answered lookup's access-log record could be lost in a database crash

Earlier variants (no pool reset query, an async API-key guard, cached associated-data bytes)
measured gains and were adopted in src/.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from prefs import app, db

VARIANTS = {"plain", "no-metrics", "async-commit"}


def _async_commit_pool() -> Any:
    create_pool = db.create_pool

    async def create(
        url: str, min_size: int, max_size: int, server_settings: dict[str, str] | None = None
    ) -> asyncpg.Pool:
        settings = {**(server_settings or {}), "synchronous_commit": "off"}
        return await create_pool(url, min_size, max_size, settings)

    return create


class _PassThrough(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        await next_app(scope, receive, send)


def apply(variants: set[str]) -> None:
    """Patch this process for the given variants."""
    unknown = variants - VARIANTS
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "async-commit" in variants:
        db.create_pool = _async_commit_pool()
    if "no-metrics" in variants:
        app.ObservabilityMiddleware = _PassThrough  # type: ignore[misc]


def create_app() -> Litestar:
    """The prefs app with PREFS_VARIANTS applied."""
    apply(set(filter(None, os.environ.get("PREFS_VARIANTS", "").split(","))))
    return app.create_app()
