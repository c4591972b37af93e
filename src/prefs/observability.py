"""Metrics (Prometheus), request ids and structured JSON logs.

Logs carry ids, routes, statuses and timings — never bodies, tokens, keys or personal data.
With several worker processes, metrics are aggregated through PROMETHEUS_MULTIPROC_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
import time
import traceback
from bisect import bisect_left
from typing import Any

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from prefs.settings import LogSettings

disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter("prefs_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "prefs_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
LOOKUPS = Counter("prefs_pos_lookups", "Till lookups by outcome", ["via", "outcome"])
DISCLOSURES = Counter("prefs_disclosures", "Disclosures recorded in access logs", ["to"])
POOL_SIZE = Gauge(
    "prefs_db_pool_connections", "Connections open in the pool", multiprocess_mode="livesum"
)
POOL_IDLE = Gauge(
    "prefs_db_pool_idle_connections", "Idle connections in the pool", multiprocess_mode="livesum"
)

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16_384
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# One line per answered request: method, route template, status, milliseconds (and the request id
# every line carries). Never the path as sent, the query, headers or bodies: they hold cards,
# codes, references and tokens.
request_log = logging.getLogger("prefs.requests")
_REQUEST_LINE = "%s %s %d %.1f ms"


class BatchedCounter:
    """A labelled counter the hot path adds to in memory; :func:`flush_metrics` hands the total
    to Prometheus. With several workers every Prometheus increment takes a lock and writes a
    memory-mapped file (about 3 µs each, four or five per till lookup); this is an integer add."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0.0
        _batched.append(self)

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class BatchedHistogram:
    """A labelled histogram observed in memory, its buckets and sum handed to Prometheus by
    :func:`flush_metrics` (Prometheus' own ``observe`` writes two memory-mapped values)."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _batched.append(self)

    def observe(self, amount: float) -> None:
        self._sum += amount
        self._counts[bisect_left(self._bounds, amount)] += 1  # the first bound >= amount

    def flush(self) -> None:
        if not any(self._counts):
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._child._sum.inc(total)
        for bucket, count in zip(self._child._buckets, counts, strict=True):
            if count:
                bucket.inc(count)


_batched: list[BatchedCounter | BatchedHistogram] = []
FLUSH_SECONDS = 1.0  # how stale another worker's counts may be in a scrape


def flush_metrics() -> None:
    """Hand every batched count of this process to Prometheus."""
    for metric in _batched:
        metric.flush()


async def flush_metrics_periodically(interval: float = FLUSH_SECONDS) -> None:
    """Flush this worker's counts every ``interval`` seconds until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(interval)
            flush_metrics()
    finally:
        flush_metrics()


_children: dict[tuple[str, str, int], tuple[BatchedCounter, BatchedHistogram]] = {}


def _metrics_for(method: str, route: str, status: int) -> tuple[BatchedCounter, BatchedHistogram]:
    """The labelled counter and histogram of one method, route and status, looked up once
    (only routed requests get here, so methods and routes are the app's own)."""
    children = _children.get((method, route, status))
    if children is None:
        children = (
            BatchedCounter(REQUESTS.labels(method, route, str(status))),
            BatchedHistogram(LATENCY.labels(method, route)),
        )
        _children[(method, route, status)] = children
    return children


class ObservabilityMiddleware(ASGIMiddleware):
    """Gives each request an id (X-Request-ID, echoed back), adds the security headers every
    answer carries, and records its status and latency."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers_in = list(scope["headers"])
        if (
            len(headers_in) > MAX_HEADERS
            or sum(len(k) + len(v) for k, v in headers_in) > MAX_HEADER_BYTES
        ):
            body = (
                b'{"type":"urn:prefs:problem:headers-too-large","title":"Request headers too large",'
                b'"status":431,"detail":"Send at most 100 headers and 16 KiB of them."}'
            )
            start: Any = {
                "type": "http.response.start",
                "status": 431,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
            finish: Any = {"type": "http.response.body", "body": body}
            await send(start)
            await send(finish)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        rid = incoming if _REQUEST_ID.fullmatch(incoming) else os.urandom(16).hex()
        token = request_id.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in present]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("path_template") or "unmatched"
            method = scope["method"]  # type: ignore[typeddict-item]
            count, latency = _metrics_for(method, route, status)
            count.inc()
            latency.observe(elapsed)
            if request_log.isEnabledFor(logging.INFO):
                _log_request(method, route, status, elapsed)
            request_id.reset(token)


def _log_request(method: str, route: str, status: int, elapsed: float) -> None:
    """The request's line, made and handled directly: `info()` would first look up the calling
    frame, which no line shows (a quarter of a line's cost)."""
    ms = round(elapsed * 1000, 1)
    fields = {"method": method, "route": route, "status": status, "duration_ms": ms}
    args = (method, route, status, ms)
    request_log.handle(
        request_log.makeRecord(
            request_log.name,
            logging.INFO,
            __file__,
            0,
            _REQUEST_LINE,
            args,
            None,
            None,
            {"http": fields},
        )
    )


def render_metrics(pool: Any) -> tuple[bytes, str]:
    """The Prometheus exposition text, across all worker processes when there are several (this
    one's counts as of now, the others' as of their last flush, at most a second ago)."""
    flush_metrics()
    if pool is not None:
        POOL_SIZE.set(pool.get_size())
        POOL_IDLE.set(pool.get_idle_size())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id (and exception type).

    A line per request makes this a hot path: msgspec encodes, and the time's seconds are
    formatted once a second (a handler formats one record at a time, under its lock)."""

    _second: tuple[int, str] = (-1, "")

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        http = getattr(record, "http", None)
        if http is not None:  # the request log's fields, for queries over the logs
            entry.update(http)
        if record.exc_info and record.exc_info[0] is not None:
            # frames only: an exception's message may quote a value, and values stay out of logs
            entry["exception"] = record.exc_info[0].__name__
            entry["trace"] = "".join(traceback.format_tb(record.exc_info[2]))
        return msgspec.json.encode(entry).decode()


class TextFormatter(logging.Formatter):
    """For people: level, logger, message, and the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id.get()
        return line if rid == "-" else f"{line} request_id={rid}"


class LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes the request lines an event loop's turn logs in one write, on
    the loop's next turn: a line per request would otherwise cost a write to stderr each (stderr
    is line-buffered), a system call per request on the hot path. Every other line (those of the
    loggers not in ``batched``, and any logged outside a running loop) is written at once, and so
    is every line pending when the handler is flushed (at exit, by logging.shutdown). Order is
    kept: pending lines go out before any line written directly.

    Only the request log waits: a worker process of `prefs serve --workers` ends the moment its
    graceful shutdown is over (uvicorn raises SIGTERM again, and the worker's handler is the
    default), in the turn that logs its last lines, so a line kept for the next turn there would
    be lost."""

    def __init__(self, batched: frozenset[str] = frozenset({request_log.name})) -> None:
        super().__init__()
        self.batched = batched
        self._pending: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None  # the loop a flush waits on

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:  # as logging.StreamHandler: a bad record is reported, not raised
            self.handleError(record)
            return
        self._pending.append(line)
        loop = None
        if record.name in self.batched:
            with contextlib.suppress(RuntimeError):  # no loop in this thread: written at once
                loop = asyncio.get_running_loop()
        if loop is None:
            self.flush()
        elif self._flush_on is not loop:  # a loop closed before its flush ran waits no more
            self._flush_on = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        self.acquire()
        try:
            self._flush_on = None
            if self._pending:
                lines, self._pending = "".join(self._pending), []
                try:
                    self.stream.write(lines)
                except Exception:  # a closed or broken stderr loses these lines, never a request
                    self.handleError(logging.makeLogRecord({"msg": "log lines lost"}))
            super().flush()
        finally:
            self.release()


def configure_logging(log: LogSettings) -> None:
    """Root logging to stderr, JSON lines by default (PREFS_LOG_FORMAT=text for people); the
    request log follows the root level unless PREFS_REQUEST_LOG=off."""
    handler = LoopBatchedHandler()
    handler.setFormatter(JsonFormatter() if log.json_lines else TextFormatter())
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log.level)
    request_log.setLevel(logging.NOTSET if log.request_log else logging.WARNING)
    for noisy in ("pgserver", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
