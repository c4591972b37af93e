"""Patched copies of the service for the benchmark's experiments (never used in production).

Each variant patches this process before the app is built, to measure a change to src/ without
making it there. bench.py serves them next to the real `prefs serve`:

    uv run python loadtests/bench.py --variant reset-off --variant reset-off+async-guard+fast-aad

PREFS_VARIANTS (comma-separated) selects them:
  plain         nothing patched (the same app as `prefs serve`, started the same way)
  reset-off     asyncpg pool without its reset query on release: one round trip less per request
                (requests leave no session state: only SET LOCAL and transaction-scoped locks)
  async-guard   the till's API-key guard as a coroutine: Litestar runs sync guards in a thread
  fast-aad      field associated data built from cached bytes, not a FieldAddress per call
  no-metrics    no observability middleware (request id, Prometheus counters): its cost, as an
                upper bound
  async-commit  synchronous_commit=off on the pool: shows what the WAL flush costs. NOT a
                proposal: an answered lookup's access-log record could be lost in a database crash
"""

from __future__ import annotations

import os
import struct
import uuid
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from prefs import app, auth, crypto, db
from prefs.pos.api import PosController

VARIANTS = {"plain", "reset-off", "async-guard", "fast-aad", "no-metrics", "async-commit"}
_LENGTH = struct.Struct(">H")
_PLACES: dict[tuple[str, str], bytes] = {}


def _pool_factory(variants: set[str]) -> Any:
    async def no_reset(_: asyncpg.Connection) -> None:
        """Nothing to undo between requests."""

    async def create_pool(url: str, min_size: int, max_size: int) -> asyncpg.Pool:
        extra: dict[str, Any] = {}
        if "reset-off" in variants:
            extra["reset"] = no_reset
        if "async-commit" in variants:
            extra["server_settings"] = {"synchronous_commit": "off"}
        pool = await asyncpg.create_pool(
            db.asyncpg_dsn(url), min_size=min_size, max_size=max_size, init=db._init_connection,
            command_timeout=30, max_inactive_connection_lifetime=300, **extra,
        )  # fmt: skip
        assert pool is not None
        return pool

    return create_pool


def _async_api_key_guard(kind: str) -> Any:
    sync_guard = auth.api_key_guard(kind)

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        sync_guard(connection, handler)

    return guard


class FastDataKey(crypto.DataKey):
    """DataKey whose associated data is the same bytes, built from a per-key cached prefix."""

    __slots__ = ("_prefix",)

    def __init__(self, customer_id: uuid.UUID, generation: int, key: bytes) -> None:
        super().__init__(customer_id, generation, key)
        self._prefix = _LENGTH.pack(14) + b"prefs.field.v1" + _LENGTH.pack(16) + customer_id.bytes

    def _field_aad(self, table: str, column: str, row_id: object) -> bytes:
        place = _PLACES.get((table, column))
        if place is None:
            t, c = table.encode(), column.encode()
            place = _PLACES[(table, column)] = _LENGTH.pack(len(t)) + t + _LENGTH.pack(len(c)) + c
        row = str(row_id).encode()
        return self._prefix + place + _LENGTH.pack(len(row)) + row

    def encrypt(self, plaintext: bytes, table: str, column: str, row_id: object) -> bytes:
        aad = self._field_aad(table, column, row_id)
        return crypto._seal(self._aead, self.generation, plaintext, aad)

    def decrypt(self, blob: bytes, table: str, column: str, row_id: object) -> bytes:
        if crypto._header(blob) != self.generation:
            raise crypto.DecryptionError
        return crypto._open(self._aead, blob, self._field_aad(table, column, row_id))


class _PassThrough(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        await next_app(scope, receive, send)


def apply(variants: set[str]) -> None:
    """Patch this process for the given variants."""
    unknown = variants - VARIANTS
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if variants & {"reset-off", "async-commit"}:
        db.create_pool = _pool_factory(variants)
    if "async-guard" in variants:
        PosController.guards = [_async_api_key_guard("pos")]
    if "fast-aad" in variants:
        crypto.DataKey = FastDataKey  # type: ignore[misc]
    if "no-metrics" in variants:
        app.ObservabilityMiddleware = _PassThrough  # type: ignore[misc]


def create_app() -> Litestar:
    """The prefs app with PREFS_VARIANTS applied."""
    apply(set(filter(None, os.environ.get("PREFS_VARIANTS", "").split(","))))
    return app.create_app()
