"""Three `prefs serve` instances on one database behind a real HAProxy (straight to PostgreSQL,
or through PgBouncer in transaction mode with PREFS_TEST_POOLER=pgbouncer): Locust through the load balancer while one instance
is SIGKILLed and started again; every acknowledged write is in the database afterwards; the
till's miss throttle and Idempotency-Key replays hold across instances.

Figures are printed (run with -s to see them): Locust's req/s, p95/p99 and failures, and the
kill's counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefs import credentials, db
from prefs.auth import DevIssuer
from prefs.products import MAX_PREFERENCES
from prefs.settings import load
from tests.support.cluster import HAPROXY_MISSING, HAProxy, Instance, haproxy_path
from tests.support.customer import CHINOS, bearer
from tests.support.database import Database, admin, with_database
from tests.support.paths import repo_root
from tests.support.pgbouncer import PgBouncer, pgbouncer_path
from tests.support.stores import FROM_HIGH_STREET, HIGH_STREET, in_directory
from tests.support.till import fresh_card

if haproxy_path() is None:
    print(f"\ntest_scale_out.py skipped: {HAPROXY_MISSING}")
    pytest.skip(HAPROXY_MISSING, allow_module_level=True)

LOCUST_SECONDS = 24
KILL_AFTER = 8  # seconds into the Locust run
USERS = 12
WRITERS = 4  # the write tracker's concurrent clients
LOCKER_FILL = MAX_PREFERENCES - 50  # each tracker customer's preferences, then another's
MISSES_PER_KEY = 30  # the service's default per till key and minute


@dataclass
class Cluster:
    database_url: str  # straight to PostgreSQL, for looking at what is stored
    via: str
    instances: list[Instance]
    haproxy: HAProxy
    seed_file: Path
    issuer: DevIssuer
    work: Path


def _clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFS_", "LOCUST_"))}
    return {**env, **settings}


# The cluster reaches the database the way the suite's service does: straight, or through
# PgBouncer when the suite runs with PREFS_TEST_POOLER=pgbouncer (CI runs each once).
VIA = "pgbouncer" if os.environ.get("PREFS_TEST_POOLER") == "pgbouncer" else "direct"
if VIA == "pgbouncer" and pgbouncer_path() is None:
    pytest.skip(
        "PREFS_TEST_POOLER=pgbouncer but pgbouncer is not installed", allow_module_level=True
    )


@pytest.fixture(scope="module", params=[VIA])
def cluster(
    request: pytest.FixtureRequest, database: Database, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    via: str = request.param
    work = tmp_path_factory.mktemp(f"scale-out-{via}")
    name = f"prefs_scale_{via}_{secrets.token_hex(3)}"
    asyncio.run(admin(database.server_url, f"CREATE DATABASE {name}"))
    url = with_database(database.server_url, name)
    data_dir = work / "data"
    settings = load({"PREFS_DATA_DIR": str(data_dir)})  # the keys all three instances share
    try:
        with contextlib.ExitStack() as stack:
            _seed(url, data_dir, work / "seed.json")
            asyncio.run(_add_high_street(url))
            app_url, pooler = url, "none"
            if via == "pgbouncer":
                bouncer = stack.enter_context(PgBouncer(database.server_url, pool_size=4))
                app_url, pooler = bouncer.url(url), "transaction"
            env = _clean_env(
                PREFS_DATA_DIR=str(data_dir),
                PREFS_DATABASE_URL=app_url,
                PREFS_DATABASE_POOLER=pooler,
                PREFS_DATABASE_LAYOUT=database.layout,
                PREFS_LOG_LEVEL="WARNING",
                PREFS_PURGE_INTERVAL="5",  # three purgers on one database: one runs at a time
                PREFS_STORE_WAITING_REORDERS="100000",
                PREFS_CUSTOMER_REQUESTS_PER_MINUTE="100000",
            )
            instances = [Instance(letter, env, work) for letter in ("a", "b", "c")]
            for instance in instances:
                instance.start()
                stack.callback(instance.stop)
            for instance in instances:
                instance.wait_ready()
            haproxy = stack.enter_context(HAProxy(instances))
            yield Cluster(
                database_url=url,
                via=via,
                instances=instances,
                haproxy=haproxy,
                seed_file=work / "seed.json",
                issuer=DevIssuer(settings.dev_issuer_key_path),
                work=work,
            )
    finally:
        asyncio.run(admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _seed(url: str, data_dir: Path, output: Path) -> None:
    """loadtests/seed.py, as the smoke run calls it (it migrates the database first)."""
    seeded = subprocess.run(
        [
            sys.executable,
            str(repo_root() / "loadtests" / "seed.py"),
            *("--customers", "400", "--preferences", "3", "--tills", "6", "--stores", "2"),
            *("--workers", "1", "--batch", "400", "--no-analyse", "--output", str(output)),
        ],
        env=_clean_env(PREFS_DATA_DIR=str(data_dir), PREFS_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr


async def _add_high_street(url: str) -> None:
    connection = await db.connect(url)
    try:
        await in_directory(connection, HIGH_STREET, "High Street")
    finally:
        await connection.close()


# --- the write tracker ---------------------------------------------------------------------------


@dataclass
class Tracker:
    """Customers saving preferences and reordering them through the load balancer; every 2xx
    answer is an acknowledged write, checked in the database afterwards."""

    sent: int = 0
    failed: list[tuple[float, str]] = field(default_factory=list)  # (when, what)
    preferences: list[uuid.UUID] = field(default_factory=list)
    reorders: list[uuid.UUID] = field(default_factory=list)
    retried_reorders: int = 0

    async def send(self, http: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
        self.sent += 1
        try:
            response = await http.request(method, path, **kw)
        except httpx.TransportError as error:
            self.failed.append((time.monotonic(), f"{method} {path}: {error!r}"))
            return None
        if not response.is_success:
            self.failed.append((time.monotonic(), f"{method} {path}: {response.status_code}"))
            return None
        return response

    async def customer(self, http: httpx.AsyncClient, issuer: DevIssuer) -> dict[str, str]:
        """A newly enrolled customer's headers."""
        headers = bearer(issuer.mint(f"tracker-{uuid.uuid4()}@example.test"))
        enrolled = None
        while enrolled is None:
            enrolled = await self.send(http, "POST", "/v1/me", headers=headers)
        return headers

    async def writer(self, base: str, issuer: DevIssuer, until: float) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            headers, saved_here = await self.customer(http, issuer), 0
            while time.monotonic() < until:
                if saved_here == LOCKER_FILL:  # a locker holds MAX_PREFERENCES: the next customer
                    headers, saved_here = await self.customer(http, issuer), 0
                saved = await self.send(
                    http, "POST", "/v1/me/preferences", headers=headers, json=CHINOS
                )
                if saved is None:
                    continue  # not acknowledged: the tracker does not count it either way
                self.preferences.append(uuid.UUID(saved.json()["id"]))
                saved_here += 1
                key = {**headers, "Idempotency-Key": str(uuid.uuid4())}
                body = {"quantity": 1, "fulfiller": FROM_HIGH_STREET}
                path = f"/v1/me/preferences/{saved.json()['id']}/reorders"
                for attempt in range(3):  # the same key: a retry never orders twice
                    ordered = await self.send(http, "POST", path, headers=key, json=body)
                    if ordered is not None:
                        self.reorders.append(uuid.UUID(ordered.json()["id"]))
                        self.retried_reorders += attempt > 0
                        break


# --- Locust --------------------------------------------------------------------------------------


def _locust(cluster: Cluster, seconds: int) -> subprocess.Popen[str]:
    prefix = cluster.work / "locust"
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "locust"),
            *("-f", str(repo_root() / "loadtests" / "locustfile.py")),
            *("--headless", "--only-summary", "--loglevel", "WARNING"),
            *("--host", cluster.haproxy.url, "--seed-file", str(cluster.seed_file)),
            *("-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s", "--stop-timeout", "5"),
            *("--csv", str(prefix), "--think-time", "0.3"),
            # this test judges failures itself, by when they happened
            *("--max-fail-ratio", "1", "--p95-ms", "1e9", "--p99-ms", "1e9"),
        ],
        cwd=repo_root(),
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _locust_figures(cluster: Cluster) -> dict[str, Any]:
    prefix = cluster.work / "locust"
    with (prefix.parent / f"{prefix.name}_stats.csv").open(newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    with (prefix.parent / f"{prefix.name}_stats_history.csv").open(newline="") as handle:
        history = [
            (int(row["Timestamp"]), int(row["Total Failure Count"]))
            for row in csv.DictReader(handle)
            if row["Name"] == "Aggregated"
        ]
    return {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "rps": float(total["Requests/s"]),
        "p50": total["50%"],
        "p95": total["95%"],
        "p99": total["99%"],
        "history": history,
    }


def test_locust_through_haproxy_loses_nothing_when_an_instance_is_killed(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
):
    victim = cluster.instances[1]
    tracker = Tracker()
    started = time.monotonic()
    locust = _locust(cluster, LOCUST_SECONDS)
    killed_at: list[float] = []  # wall clock and monotonic
    restarted: list[float] = []

    def kill_and_restart() -> None:
        time.sleep(KILL_AFTER)
        killed_at.extend([time.time(), time.monotonic()])
        victim.kill()
        victim.start()
        victim.wait_ready()
        restarted.append(time.monotonic())

    killer = threading.Thread(target=kill_and_restart)
    killer.start()

    async def write() -> None:
        until = started + LOCUST_SECONDS - 2
        await asyncio.gather(
            *(tracker.writer(cluster.haproxy.url, cluster.issuer, until) for _ in range(WRITERS))
        )

    asyncio.run(write())
    killer.join()
    output, _ = locust.communicate(timeout=120)
    assert killed_at and restarted, "the instance was not killed and restarted"

    # The restarted instance is back in rotation: HAProxy sends it requests again.
    before = cluster.haproxy.sessions(victim.name)
    for _ in range(9):
        assert httpx.get(f"{cluster.haproxy.url}/health/ready", timeout=5).status_code == 200
    assert cluster.haproxy.sessions(victim.name) > before
    assert cluster.haproxy.states() == {each.name: "UP" for each in cluster.instances}

    figures = _locust_figures(cluster)
    kill_wall, kill_mono = killed_at

    # Failures only around the kill (requests in flight on the killed instance), and no more
    # than could have been in flight there: one per Locust user and per tracker client.
    window = (kill_wall - 1, kill_wall + 3)
    failures_by_second = [
        (at, count - previous)
        for (at, count), (_, previous) in zip(
            figures["history"], [(0, 0), *figures["history"]], strict=False
        )
        if count > previous
    ]
    outside = [(at, n) for at, n in failures_by_second if not window[0] <= at <= window[1] + 1]
    tracker_outside = [
        what for at, what in tracker.failed if not kill_mono - 1 <= at <= kill_mono + 3
    ]
    in_flight_bound = USERS + WRITERS

    async def stored() -> tuple[int, int]:
        conn = await db.connect(cluster.database_url)
        try:
            preferences = await conn.fetchval(
                "SELECT count(*) FROM preferences WHERE preference_id = ANY($1::uuid[])",
                tracker.preferences,
            )
            reorders = await conn.fetchval(
                "SELECT count(*) FROM reorders WHERE reorder_id = ANY($1::uuid[])",
                tracker.reorders,
            )
            return preferences, reorders
        finally:
            await conn.close()

    preferences, reorders = asyncio.run(stored())
    acknowledged = len(tracker.preferences) + len(tracker.reorders)
    lost = acknowledged - preferences - reorders
    with capsys.disabled():  # the figures belong in CI's log too
        _print_figures(
            cluster, figures, tracker, failures_by_second, restarted[0] - kill_mono, lost
        )
    assert figures["requests"] > 0 and acknowledged > 0
    assert not outside, f"Locust failures away from the kill: {outside}\n{output}"
    assert not tracker_outside, f"tracker failures away from the kill: {tracker_outside}"
    assert figures["failures"] + len(tracker.failed) <= in_flight_bound, output
    assert lost == 0
    assert preferences == len(tracker.preferences) and reorders == len(tracker.reorders)


def _print_figures(
    cluster: Cluster,
    figures: dict[str, Any],
    tracker: Tracker,
    failures_by_second: list[tuple[int, int]],
    back_after: float,
    lost: int,
) -> None:
    victim = cluster.instances[1]
    acknowledged = len(tracker.preferences) + len(tracker.reorders)
    print(
        f"\nscale-out [{cluster.via}] 3 instances behind HAProxy, {USERS} Locust users, "
        f"{LOCUST_SECONDS} s, instance {victim.name} SIGKILLed at {KILL_AFTER} s and back in "
        f"{back_after:.1f} s\n"
        f"  locust: {figures['requests']} requests, {figures['rps']:.1f} req/s, "
        f"p50 {figures['p50']} ms, p95 {figures['p95']} ms, p99 {figures['p99']} ms, "
        f"{figures['failures']} failed (by second: {failures_by_second})\n"
        f"  tracker: {tracker.sent} requests sent, {len(tracker.failed)} failed, "
        f"{acknowledged} acknowledged writes checked ({len(tracker.preferences)} preferences, "
        f"{len(tracker.reorders)} reorders, {tracker.retried_reorders} after a retry with "
        f"the same Idempotency-Key), lost = {lost}\n"
        f"  tracker failures: {[what for _, what in tracker.failed]}"
    )


def test_the_miss_throttle_counts_misses_on_every_instance_as_one(cluster: Cluster):
    async def run() -> list[int]:
        conn = await db.connect(cluster.database_url)
        try:
            store = await in_directory(conn, None)
            _, key = await credentials.create(conn, "pos", "Till 9", store=store)
        finally:
            await conn.close()
        asks = MISSES_PER_KEY + 9  # spread over the three instances, all at once
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=each.url, timeout=30))
                for each in cluster.instances
            ]
            answers = await asyncio.gather(
                *(
                    clients[i % 3].post(
                        "/v1/pos/lookup",
                        headers=bearer(key),
                        json={"card": fresh_card().replace(" ", "")},
                    )
                    for i in range(asks)
                )
            )
        return [answer.status_code for answer in answers]

    statuses = asyncio.run(run())
    assert sorted(set(statuses)) == [404, 429]
    assert statuses.count(404) == MISSES_PER_KEY, statuses


def test_one_idempotency_key_sent_to_each_instance_orders_once(cluster: Cluster):
    async def run() -> tuple[list[httpx.Response], int]:
        headers = bearer(cluster.issuer.mint(f"replay-{uuid.uuid4()}@example.test"))
        first = cluster.instances[0].url
        async with httpx.AsyncClient(base_url=first, timeout=30) as http:
            assert (await http.post("/v1/me", headers=headers)).status_code == 201
            saved = await http.post("/v1/me/preferences", headers=headers, json=CHINOS)
            assert saved.status_code == 201, saved.text
        path = f"/v1/me/preferences/{saved.json()['id']}/reorders"
        keyed = {**headers, "Idempotency-Key": str(uuid.uuid4())}
        body = {"quantity": 2, "fulfiller": FROM_HIGH_STREET}
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(httpx.AsyncClient(base_url=each.url, timeout=30))
                for each in cluster.instances
            ]
            answers = await asyncio.gather(
                *(http.post(path, headers=keyed, json=body) for http in clients * 2)
            )
        conn = await db.connect(cluster.database_url)
        try:
            rows = await conn.fetchval(
                "SELECT count(*) FROM reorders WHERE preference_id = $1",
                uuid.UUID(saved.json()["id"]),
            )
        finally:
            await conn.close()
        return answers, rows

    answers, rows = asyncio.run(run())
    assert rows == 1
    ordered = [answer for answer in answers if answer.status_code == 201]
    # at once, a twin may find the first still being written: 409, and its retry replays
    assert all(answer.status_code in (201, 409) for answer in answers), answers
    assert len({answer.content for answer in ordered}) == 1
    assert sum("idempotent-replayed" not in answer.headers for answer in ordered) == 1


def test_a_request_whose_body_never_arrives_whole_is_answered_408_by_the_load_balancer(
    cluster: Cluster,
):
    """prefs waits for a declared body as long as its client stays: the load balancer in front
    (docs/deploy.md) answers a till that declares more than it sends, within its 10 s, as prefs
    answers errors (problem+json), and closes the connection."""
    with socket.create_connection(("127.0.0.1", cluster.haproxy.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/pos/lookup HTTP/1.1\r\nHost: prefs\r\nAuthorization: Bearer pos_x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"card":'
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"content-type: application/problem+json" in head.lower(), head
    assert json.loads(body)["type"] == "urn:prefs:problem:request-timeout"
    assert 9 < waited < 20, waited
