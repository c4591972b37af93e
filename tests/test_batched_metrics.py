"""Metrics the hot path counts in memory reach Prometheus exactly as if counted there, within a
second, and at once for the worker serving the scrape."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from prefs import observability
from prefs.observability import (
    LATENCY,
    BatchedCounter,
    BatchedHistogram,
    flush_metrics,
    flush_metrics_periodically,
)

BOUNDS = LATENCY._upper_bounds[:-1]  # the request histogram's own buckets (the last is +Inf)


def exposition(registry: CollectorRegistry, name: str) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith(name) and "_created" not in line
    ]


def pair(kind: type, name: str, **options: object) -> tuple[object, object]:
    """The same metric twice, in registries of their own: one counted directly, one batched."""
    direct, batched = CollectorRegistry(), CollectorRegistry()
    return (
        kind(name, "direct", ["route"], registry=direct, **options).labels("r"),
        kind(name, "batched", ["route"], registry=batched, **options).labels("r"),
    ), (direct, batched)


@given(
    st.lists(st.one_of(st.sampled_from(BOUNDS), st.floats(min_value=0, max_value=10)), max_size=40)
)
def test_a_batched_histogram_reads_as_prometheus_would_have_counted(seconds):
    (direct, batched), (direct_registry, batched_registry) = pair(
        Histogram, "t_seconds", buckets=BOUNDS
    )
    mine = BatchedHistogram(batched)
    try:
        for value in seconds:  # bounds themselves included: a value equal to one is inside it
            direct.observe(value)  # type: ignore[attr-defined]
            mine.observe(value)
        flush_metrics()
        assert exposition(batched_registry, "t_seconds") == exposition(direct_registry, "t_seconds")
    finally:
        observability._batched.remove(mine)


async def test_batched_counts_reach_prometheus_within_a_second_without_a_scrape():
    (direct, batched), (direct_registry, batched_registry) = pair(Counter, "t_total")
    mine = BatchedCounter(batched)
    flusher = asyncio.create_task(flush_metrics_periodically(0.05))
    try:
        for _ in range(7):
            direct.inc()  # type: ignore[attr-defined]
            mine.inc()
        assert exposition(batched_registry, "t_total") != exposition(direct_registry, "t_total")
        await asyncio.sleep(0.2)
        assert exposition(batched_registry, "t_total") == exposition(direct_registry, "t_total")
        mine.inc(3)
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        observability._batched.remove(mine)
    direct.inc(3)  # type: ignore[attr-defined]
    assert exposition(batched_registry, "t_total") == exposition(direct_registry, "t_total")
