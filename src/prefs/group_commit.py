"""Group commit: requests that arrive while a batch is in the database go together in the next
one, so that many requests share one set of statements and one WAL flush.

The engine knows nothing of what it commits. A subclass says how one batch is written and
answered (``commit``); the engine queues requests, keeps at most ``in_flight`` batches in the
database, and, when the database refuses a shared batch because of one request's data, tries
each request of that batch alone, so that one request's error is never another's. A request
whose caller went away before its batch ran is not sent; one that goes away while its batch runs
is still written (its answer is dropped). The till lookup (prefs.pos.service) is the user.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import Generic, TypeVar

import asyncpg

from prefs.errors import Unavailable

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

# Errors the server reports about one request's data (data exceptions, integrity, a trigger's
# RAISE, serialisation or deadlock): worth trying each request of a refused batch alone. Any other
# error (timeouts, read-only after a failover, disk full) would fail each of them too.
RETRY_ALONE_CLASSES = ("22", "23", "P0", "40")

STOPPING = "The service is stopping; retry shortly."
STOPPING_RETRY_AFTER = 2  # seconds: another instance, or this one restarted, answers by then


class Queued(Generic[RequestT, ResultT]):
    """One request and the future its caller awaits."""

    __slots__ = ("future", "request")

    def __init__(self, request: RequestT, future: asyncio.Future[ResultT]) -> None:
        self.request = request
        self.future = future

    def settle(self, result: ResultT) -> None:
        if not self.future.done():  # else its caller went away meanwhile: the write stays
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def fail_all(batch: Sequence[Queued[RequestT, ResultT]], error: BaseException) -> None:
    """Hand ``error`` to each request still waiting, each its own copy (a traceback grows on the
    exception object each time it is raised)."""
    for queued in batch:
        queued.fail(copy.copy(error))


class GroupCommit(Generic[RequestT, ResultT]):
    """Batches of requests, per worker process, on connections from ``pool``.

    A request that finds fewer than ``in_flight`` batches in the database starts one at once, so
    a quiet client waits for nothing. Under load, requests that arrive meanwhile queue and go
    together, up to ``max_batch``, in the next batch.
    """

    def __init__(self, pool: asyncpg.Pool, max_batch: int = 64, in_flight: int = 1) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.running = 0
        self.queue: list[Queued[RequestT, ResultT]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def commit(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: Sequence[Queued[RequestT, ResultT]],
    ) -> None:
        """Write ``batch`` and settle each of its requests (subclasses). A PostgresError raised
        here fails the batch; the engine then tries its requests alone where that can help."""
        raise NotImplementedError

    async def submit(self, request: RequestT) -> ResultT:
        """The result of ``request``, from whichever batch carried it."""
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self.queue.append(Queued(request, future))
        if self.running < self.in_flight:
            self._start()
        return await future

    async def close(self) -> None:
        """Let the batches in flight finish (before their pool closes)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks))

    def _start(self) -> None:
        self.running += 1
        task = asyncio.create_task(self._drain())
        self.tasks.add(task)
        task.add_done_callback(self._drained)

    def _drained(self, task: asyncio.Task[None]) -> None:
        # counted here, not in a finally: a task cancelled before it ran never runs one
        self.tasks.discard(task)
        self.running -= 1
        if task.cancelled():
            if not self.tasks:  # the loop is going away: nobody else will answer them
                fail_all(self.queue, Unavailable(STOPPING, retry_after=STOPPING_RETRY_AFTER))
                self.queue = []
        elif self.queue and self.running < self.in_flight:
            self._start()  # queued after this task's last look at the queue

    async def _drain(self) -> None:
        while self.queue:
            batch, self.queue = self.queue[: self.max_batch], self.queue[self.max_batch :]
            batch = [queued for queued in batch if not queued.future.done()]  # gone: not asked
            if batch:
                await self._run(batch)

    async def commit_or_each_alone(
        self,
        conn: asyncpg.pool.PoolConnectionProxy[asyncpg.Record],
        batch: Sequence[Queued[RequestT, ResultT]],
    ) -> None:
        """``commit`` the batch; when the database refuses it because of some request's data,
        each request still waiting alone, so that one request's error fails that request only.
        Any other PostgresError is raised (it would fail each of them too)."""
        try:
            await self.commit(conn, batch)
        except asyncpg.PostgresError as error:
            if len(batch) == 1 or not str(error.sqlstate).startswith(RETRY_ALONE_CLASSES):
                raise
            for queued in batch:
                if queued.future.done():
                    continue  # answered, or its caller went away: not asked again
                try:
                    await self.commit(conn, [queued])
                except asyncpg.PostgresError as its_own:
                    queued.fail(its_own)

    async def _run(self, batch: list[Queued[RequestT, ResultT]]) -> None:
        try:
            async with self.pool.acquire() as conn:
                await self.commit_or_each_alone(conn, batch)
        except Exception as error:  # every request of the batch still waiting gets it
            fail_all(batch, error)
        except BaseException:
            fail_all(batch, Unavailable(STOPPING, retry_after=STOPPING_RETRY_AFTER))
            raise
