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
  clear-log     the till's access-log records written in clear by the lookup statement itself
                (one statement per batch, as before revision 0009), to measure what sealing them
                costs. NOT a proposal: it keeps each customer's visit history in plaintext
  in-flight-N   up to N lookup batches in the database at once per worker (the setting
                PREFS_LOOKUP_BATCHES_IN_FLIGHT, default 1): more batches share a WAL flush less,
                but a lookup waits less for the batch ahead of it
  commit-delay-U  the lookup connections wait U microseconds before flushing a commit's WAL
                (PostgreSQL's commit_delay, commit_siblings=1 so it applies from two
                transactions in progress): other commits may join the flush. Durable: the
                commit still returns only once its WAL is flushed
  gather-N      a lookup batch waits N turns of the event loop before it takes its lookups, so
                that lookups which arrived together (parsed in the same turns) go in one batch
  spill-N       with in-flight-M: a batch beyond the first starts only while at least N lookups
                wait (under load, batches overlap; a quiet till still waits for one batch only)
  staged        with in-flight-M: a batch starts only while no other is still in its lookup
                statement: one batch's lookup overlaps the previous one's insert and commit, and
                the worker's own work on its answers, instead of waiting for them

Earlier variants (no pool reset query, an async API-key guard, cached associated-data bytes)
measured gains and were adopted in src/.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from prefs import app, db
from prefs.group_commit import GroupCommit, Queued, fail_all
from prefs.pos import service as pos

VARIANTS = {"plain", "no-metrics", "async-commit", "clear-log", "staged"}
NUMBERED = ("in-flight-", "commit-delay-", "gather-", "spill-")  # followed by a number

# The lookup statement as it was before the access log was sealed: its own CTE logs every hit in
# clear (the columns in clear are still there, nullable, until the contract revision).
CLEAR_LOG = """), logged AS (
    INSERT INTO access_log (disclosure_id, customer_id, actor_kind, credential_id, actor_name,
                            store, purpose, via, preference_ids, fields)
    SELECT hit.disclosure_id, hit.customer_id, 'pos', hit.credential_id, hit.display_name,
           hit.store, 'checkout', hit.via, coalesce(shown.ids, '{}'), hit.fields
    FROM hit LEFT JOIN shown ON shown.i = hit.i
)
SELECT j.i,"""


def _clear_log_fetch() -> Any:
    lookups = {False: pos.LOOKUP, True: pos.LOOKUP_ROUTED}  # by LookupBatcher.routed
    statements = {
        routed: sql.replace(")\nSELECT j.i,", CLEAR_LOG, 1) for routed, sql in lookups.items()
    }
    for routed, sql in lookups.items():
        assert statements[routed] != sql, "the lookup statement changed: update CLEAR_LOG"

    async def fetch(
        self: pos.LookupBatcher, conn: Any, requests: Any
    ) -> tuple[list[asyncpg.Record], dict[int, Any]]:
        arguments = [*pos._arguments(requests), *self.limits]
        if self.routed:
            _, keys, _, cards, _, codes, *_ = arguments
            route = await conn.fetchrow(pos.ROUTE, keys, cards, codes)
            if not route["stores"]:
                return [], {}
            arguments += [route["customers"], route["stores"]]
        self.statements += 1
        rows = await conn.fetch(statements[self.routed], *arguments)
        answers: dict[int, Any] = {}
        for row in rows:
            if row["disclosure_id"] is not None:
                catalogue = await self.catalogue.current(conn, row["catalogue_version"])
                key = self.vault.envelope.unwrap(
                    row["customer_id"], row["generation"], row["wrapped"]
                )
                answers[row["i"]] = pos._answer(row, key, catalogue)
        return rows, answers

    return fetch


def _pool_with(extra: dict[str, str], lookup_only: bool = False) -> Any:
    """db.create_pool with more server settings (on the lookup's pool alone if asked: the one
    made with LOOKUP_SERVER_SETTINGS)."""
    create_pool = db.create_pool

    async def create(
        url: str,
        min_size: int,
        max_size: int,
        server_settings: dict[str, str] | None = None,
        **options: Any,
    ) -> asyncpg.Pool:
        settings = dict(server_settings or {})
        if not lookup_only or settings.get("plan_cache_mode") == "force_generic_plan":
            settings.update(extra)
        return await create_pool(url, min_size, max_size, settings, **options)

    return create


def _number(variants: set[str], prefix: str) -> int | None:
    values = [int(v.removeprefix(prefix)) for v in variants if v.startswith(prefix)]
    return values[-1] if values else None


class _PassThrough(ASGIMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        await next_app(scope, receive, send)


def _gathering_drain(turns: int) -> Any:
    """GroupCommit._drain, waiting ``turns`` turns of the loop before each batch."""

    async def drain(self: GroupCommit[Any, Any]) -> None:
        while self.queue:
            for _ in range(turns):
                await asyncio.sleep(0)
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            batch = [queued for queued in batch if not queued.future.done()]
            if batch:
                await self._run(batch)

    return drain


def _gated(more: Any) -> tuple[Any, Any]:
    """GroupCommit's submit and _drained, a batch started only when ``more(self)`` allows."""

    async def submit(self: GroupCommit[Any, Any], request: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queue.append(Queued(request, future))
        if more(self):
            self._start()
        return await future

    def drained(self: GroupCommit[Any, Any], task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.running -= 1
        if task.cancelled():
            if not self.tasks:
                fail_all(self.queue, RuntimeError("stopping"))
                self.queue = []
        elif self.queue and more(self):
            self._start()

    return submit, drained


def _spilling(least: int) -> tuple[Any, Any, Any]:
    """GroupCommit's submit, _drained and _drain, a batch beyond the first started or kept going
    only while at least ``least`` requests wait."""

    def more(self: GroupCommit[Any, Any]) -> bool:
        return self.running == 0 or (self.running < self.in_flight and len(self.queue) >= least)

    submit, drained = _gated(more)

    async def drain(self: GroupCommit[Any, Any]) -> None:
        while self.queue and (self.running == 1 or len(self.queue) >= least):
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            batch = [queued for queued in batch if not queued.future.done()]
            if batch:
                await self._run(batch)

    return submit, drained, drain


def _staged() -> tuple[Any, Any, Any, Any, Any]:
    """GroupCommit's submit, _start, _drained and _drain, and LookupBatcher._look_up: one batch
    per task, a task started only while no batch is between its start and the return of its
    lookup statement (``looking``), and up to in_flight at once."""

    def looking(self: GroupCommit[Any, Any]) -> set[asyncio.Task[None]]:
        tasks: set[asyncio.Task[None]] = self.__dict__.setdefault("looking", set())
        return tasks

    def more(self: GroupCommit[Any, Any]) -> bool:
        return self.running < self.in_flight and not looking(self)

    submit, gated_drained = _gated(more)

    def start(self: GroupCommit[Any, Any]) -> None:
        self.running += 1
        task = asyncio.create_task(self._drain())
        self.tasks.add(task)
        looking(self).add(task)
        task.add_done_callback(self._drained)

    def drained(self: GroupCommit[Any, Any], task: asyncio.Task[None]) -> None:
        looking(self).discard(task)
        gated_drained(self, task)

    async def drain(self: GroupCommit[Any, Any]) -> None:
        batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
        batch = [queued for queued in batch if not queued.future.done()]
        if batch:
            await self._run(batch)

    look_up = pos.LookupBatcher._look_up

    async def staged_look_up(self: pos.LookupBatcher, conn: Any, requests: Any) -> Any:
        try:
            return await look_up(self, conn, requests)
        finally:
            task = asyncio.current_task()
            if task in looking(self):
                looking(self).discard(task)  # type: ignore[arg-type]
                if self.queue and more(self):
                    self._start()

    return submit, start, drained, drain, staged_look_up


def apply(variants: set[str]) -> None:
    """Patch this process for the given variants."""
    unknown = {
        v
        for v in variants - VARIANTS
        if not any(v.startswith(p) and v.removeprefix(p).isdigit() for p in NUMBERED)
    }
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "async-commit" in variants:
        db.create_pool = _pool_with({"synchronous_commit": "off"})
    delay = _number(variants, "commit-delay-")
    if delay is not None:
        settings = {"commit_delay": str(delay), "commit_siblings": "1"}
        db.create_pool = _pool_with(settings, lookup_only=True)
    in_flight = _number(variants, "in-flight-")
    if in_flight is not None:
        os.environ["PREFS_LOOKUP_BATCHES_IN_FLIGHT"] = str(in_flight)
    turns = _number(variants, "gather-")
    if turns is not None:
        GroupCommit._drain = _gathering_drain(turns)  # type: ignore[method-assign]
    least = _number(variants, "spill-")
    if least is not None:
        submit, drained, drain = _spilling(least)
        GroupCommit.submit = submit  # type: ignore[method-assign]
        GroupCommit._drained = drained  # type: ignore[method-assign]
        GroupCommit._drain = drain  # type: ignore[method-assign]
    if "staged" in variants:
        submit, start, drained, drain, staged_look_up = _staged()
        GroupCommit.submit = submit  # type: ignore[method-assign]
        GroupCommit._start = start  # type: ignore[method-assign]
        GroupCommit._drained = drained  # type: ignore[method-assign]
        GroupCommit._drain = drain  # type: ignore[method-assign]
        pos.LookupBatcher._look_up = staged_look_up  # type: ignore[method-assign]
    if "clear-log" in variants:
        pos.LookupBatcher._fetch = _clear_log_fetch()  # type: ignore[method-assign]
    if "no-metrics" in variants:
        app.ObservabilityMiddleware = _PassThrough  # type: ignore[misc]


def create_app() -> Litestar:
    """The prefs app with PREFS_VARIANTS applied."""
    apply(set(filter(None, os.environ.get("PREFS_VARIANTS", "").split(","))))
    return app.create_app()
