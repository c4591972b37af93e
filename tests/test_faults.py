"""Faults under load: the database restarts, the service is killed, edits race.

Each scenario runs `prefs serve` as a subprocess on its own embedded PostgreSQL (started here, so
the test controls the database process), under a steady load of preference writes and till
lookups from a few concurrent clients that record every answer. Afterwards every write that got
a 2xx must be stored and every lookup that was answered must have its access-log record.

The machine running the suite is shared and slow at times, so the test waits by polling with
generous deadlines rather than sleeping for fixed times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefs import credentials, db
from prefs.auth import DevIssuer
from tests.support.customer import CHINOS, bearer
from tests.support.servers import free_port
from tests.support.stores import in_directory
from tests.support.till import confirm_card

START_TIMEOUT = 240.0  # a cold `prefs serve` migrates and seeds the demo data first
RECOVERY_TIMEOUT = 120.0
REQUEST_TIMEOUT = 60.0
PACE = 0.02  # seconds between one client's requests: a steady load, not a flood


async def _until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.1)


class Stack:
    """An embedded PostgreSQL this test controls and `prefs serve` on it, as a subprocess."""

    def __init__(self, root: Path) -> None:
        self.data_dir = root / "data"
        self.data_dir.mkdir(mode=0o700)
        self.embedded = db.EmbeddedPostgres(root / "pg")
        self.database_url = self.embedded.start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.issuer = DevIssuer(self.data_dir / "dev-issuer.pem")  # the service reads the same key

    # --- the service -------------------------------------------------------------------------
    def start_service(self, workers: int = 1) -> None:
        env = {
            **os.environ,
            "PREFS_DATA_DIR": str(self.data_dir),
            "PREFS_DATABASE_URL": self.database_url,
            "PREFS_LOG_LEVEL": "WARNING",
            # the reorderers keep one customer's reorders waiting at one store, hundreds of them
            "PREFS_STORE_WAITING_REORDERS": "100000",
        }
        command = [
            str(Path(sys.executable).with_name("prefs")),
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=log, start_new_session=True
            )

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:

            async def ready() -> bool:
                assert self.process is not None and self.process.poll() is None, self.log_tail()
                with contextlib.suppress(httpx.TransportError):
                    return (await http.get("/health/ready")).status_code == 200
                return False

            await _until(ready, START_TIMEOUT, "`prefs serve` to be ready")

    def kill_service(self) -> None:
        """SIGKILL to the whole process group: the supervisor and every worker at once."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        deadline = time.monotonic() + 60
        while True:  # workers die with their supervisor's group; wait until none is left
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, "a worker outlived SIGKILL"
            time.sleep(0.1)

    def stop_service(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill_service()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # --- the database ------------------------------------------------------------------------
    def stop_database(self) -> None:
        """A fast shutdown, run by pg_ctl as the user pgserver runs PostgreSQL as."""
        from pgserver._commands import pg_ctl

        server = self.embedded._server
        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=120
        )

    def restart_database(self) -> None:
        from pgserver._commands import pg_ctl

        server = self.embedded._server
        pg_ctl(
            ["-w", "-m", "fast", "restart"],
            pgdata=server.pgdata,
            user=server.system_user,
            timeout=120,
        )
        self.start_database()  # refreshes pgserver's view of the new postmaster

    def start_database(self) -> None:
        """Start it again with the options pgserver chose (same socket, so the same URL)."""
        server = self.embedded._server
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # pgserver gives pg_ctl 10 s, which a busy machine can exceed
            try:
                with server._lock:
                    server.ensure_postgres_running()
                break
            except (subprocess.SubprocessError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        assert server.get_uri() == self.database_url

    async def connect(self) -> Any:
        return await db.connect(self.database_url)

    def close(self) -> None:
        self.stop_service()
        self.embedded.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("faults"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
async def serving(stack: Stack) -> Stack:
    """The service up (started once, or again after a scenario that stopped it)."""
    if stack.process is None or stack.process.poll() is not None:
        stack.start_service()
    await stack.wait_ready()
    return stack


# --- the people and machines under load ---------------------------------------------------------


@dataclass
class Shopper:
    headers: dict[str, str]
    card: str


async def enrol(
    http: httpx.AsyncClient,
    stack: Stack,
    *,
    preferences: int = 1,
    pos_consent: bool = False,
    till: dict[str, str] | None = None,
) -> tuple[Shopper, list[dict[str, Any]]]:
    """A new customer with a card (confirmed at ``till``, if given) and preferences (and a `pos`
    grant, if asked)."""
    headers = bearer(stack.issuer.mint(f"fault-{uuid.uuid4()}@example.test", 3 * 3600))
    card = "".join(str(n % 10) for n in uuid.uuid4().bytes)[:16]
    enrolled = await http.post("/v1/me", headers=headers, json={"card": card})
    assert enrolled.status_code == 201, enrolled.text
    if till is not None:
        key = till["Authorization"].removeprefix("Bearer ")
        await confirm_card(http, key, Shopper(headers=headers, card=card), card)
    created = []
    for n in range(preferences):
        answer = await http.post(
            "/v1/me/preferences", headers=headers, json={**CHINOS, "note": f"setup {n}"}
        )
        assert answer.status_code == 201, answer.text
        created.append(answer.json())
    if pos_consent:
        granted = await http.put(
            "/v1/me/consents/pos", headers=headers, json={"fields": ["product", "attributes"]}
        )
        assert granted.status_code == 200, granted.text
    return Shopper(headers=headers, card=card), created


FAULT_STORE = "fault-store"


async def till_key(stack: Stack) -> str:
    conn = await stack.connect()
    try:
        _, key = await credentials.create(
            conn, "pos", "Fault till", store=await in_directory(conn, FAULT_STORE)
        )
    finally:
        await conn.close()
    return key


@dataclass
class Answer:
    at: float
    kind: str
    status: int
    retry_after: str | None
    content_type: str


@dataclass
class Load:
    """Writers and till lookups running until stopped; every answer is kept."""

    writers: list[Shopper]
    shoppers: list[Shopper]
    till: dict[str, str]
    answers: list[Answer] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    written: dict[int, list[str]] = field(default_factory=dict)  # writer -> acknowledged ids
    disclosures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def count(self, kind: str, *, ok: bool, since: float = 0.0, status: int | None = None) -> int:
        return sum(
            1
            for a in self.answers
            if a.kind == kind
            and a.at >= since
            and (200 <= a.status < 300) == ok
            and (status is None or a.status == status)
        )

    async def _client(
        self,
        kind: str,
        send: Callable[[], Awaitable[httpx.Response]],
        on_success: Callable[[httpx.Response], None],
    ) -> None:
        while not self.stop.is_set():
            try:
                response = await send()
            except httpx.TransportError as error:
                self.transport_errors[f"{kind}: {type(error).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            self.answers.append(
                Answer(
                    time.monotonic(),
                    kind,
                    response.status_code,
                    response.headers.get("retry-after"),
                    response.headers.get("content-type", ""),
                )
            )
            if response.is_success:
                on_success(response)
            await asyncio.sleep(PACE)

    def tasks(self, http: httpx.AsyncClient) -> list[Awaitable[None]]:
        clients: list[Awaitable[None]] = []
        for number, writer in enumerate(self.writers):
            acknowledged = self.written.setdefault(number, [])

            def write(writer: Shopper = writer, acknowledged: list[str] = acknowledged) -> Any:
                note = f"written under load #{len(acknowledged)}"
                return http.post(
                    "/v1/me/preferences", headers=writer.headers, json={**CHINOS, "note": note}
                )

            clients.append(
                self._client("write", write, lambda r, ids=acknowledged: ids.append(r.json()["id"]))
            )
        for shopper in self.shoppers:

            def look_up(card: str = shopper.card) -> Any:
                return http.post("/v1/pos/lookup", headers=self.till, json={"card": card})

            clients.append(
                self._client(
                    "lookup", look_up, lambda r: self.disclosures.append(r.json()["disclosure_id"])
                )
            )
        return clients


@contextlib.asynccontextmanager
async def steady_load(stack: Stack, *, writers: int = 3, lookups: int = 2) -> AsyncIterator[Load]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=REQUEST_TIMEOUT) as http:
        till = bearer(await till_key(stack))
        load = Load(
            writers=[(await enrol(http, stack))[0] for _ in range(writers)],
            shoppers=[
                (await enrol(http, stack, pos_consent=True, till=till))[0] for _ in range(lookups)
            ],
            till=till,
        )
        running = [asyncio.create_task(client) for client in load.tasks(http)]
        try:
            await _until(
                lambda: load.count("write", ok=True) >= 5 and load.count("lookup", ok=True) >= 5,
                RECOVERY_TIMEOUT,
                "the load to get going",
            )
            yield load
        finally:
            load.stop.set()
            await asyncio.gather(*running)
    print(
        f"\nload: {Counter((a.kind, a.status) for a in load.answers)}; "
        f"transport errors: {dict(load.transport_errors)}"
    )


async def assert_nothing_acknowledged_was_lost(stack: Stack, load: Load) -> None:
    """Every acknowledged write is stored, every answered lookup left its access-log record."""
    async with httpx.AsyncClient(base_url=stack.url, timeout=REQUEST_TIMEOUT) as http:
        for number, writer in enumerate(load.writers):
            listed = await http.get("/v1/me/preferences", headers=writer.headers)
            assert listed.status_code == 200, listed.text
            stored = {item["id"] for item in listed.json()["items"]}
            lost = set(load.written[number]) - stored
            assert not lost, f"acknowledged writes lost: {sorted(lost)}"
    conn = await stack.connect()
    try:
        logged = await conn.fetchval(
            "SELECT count(DISTINCT disclosure_id) FROM access_log WHERE disclosure_id = ANY($1::uuid[])",
            list(set(load.disclosures)),
        )
    finally:
        await conn.close()
    assert logged == len(set(load.disclosures)), "answered lookups missing from the access log"
    assert sum(map(len, load.written.values())) > 0 and load.disclosures


# --- (a) the database restarts ------------------------------------------------------------------


async def test_a_database_restart_answers_503_then_recovers_without_losing_writes(serving: Stack):
    stack = serving
    assert stack.process is not None
    service_pid = stack.process.pid
    async with (
        steady_load(stack) as load,
        httpx.AsyncClient(base_url=stack.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        # An outage long enough to be seen...
        before = time.monotonic()
        await asyncio.to_thread(stack.stop_database)
        await _until(
            lambda: (
                load.count("write", ok=False, since=before, status=503) >= 3
                and load.count("lookup", ok=False, since=before, status=503) >= 3
            ),
            RECOVERY_TIMEOUT,
            "503 answers while the database is down",
        )
        readiness = await http.get("/health/ready")
        assert readiness.status_code == 503 and readiness.headers.get("retry-after")
        await asyncio.to_thread(stack.start_database)
        await _recovered(load, http)
        # ...and a quick restart, which leaves every pooled connection dead.
        await asyncio.to_thread(stack.restart_database)
        await _recovered(load, http)

    assert stack.process.poll() is None and stack.process.pid == service_pid, "service restarted"
    refused = [a for a in load.answers if not 200 <= a.status < 300]
    assert refused, "the outage went unnoticed"
    wrong = [
        a
        for a in refused
        if a.status != 503
        or not a.retry_after
        or not a.content_type.startswith("application/problem+json")
    ]
    assert not wrong, (
        f"answers during the outage other than 503 problem+json with Retry-After: {wrong[:5]}"
    )
    assert not load.transport_errors, f"connections dropped: {dict(load.transport_errors)}"
    await assert_nothing_acknowledged_was_lost(stack, load)


async def _recovered(load: Load, http: httpx.AsyncClient) -> None:
    back = time.monotonic()
    await _until(
        lambda: (
            load.count("write", ok=True, since=back) >= 5
            and load.count("lookup", ok=True, since=back) >= 5
        ),
        RECOVERY_TIMEOUT,
        "the service to recover by itself",
    )
    assert (await http.get("/health/ready")).status_code == 200


# --- (b) the service is killed ------------------------------------------------------------------


@dataclass
class Reorderer:
    """A client placing reorders, retrying each with its Idempotency-Key until acknowledged."""

    headers: dict[str, str]
    preference_id: str
    keys: list[str] = field(default_factory=list)
    acknowledged: dict[str, set[str]] = field(default_factory=dict)  # key -> reorder ids seen
    replays: int = 0

    async def place(self, http: httpx.AsyncClient, key: str, until: Callable[[], bool]) -> None:
        """Send the same reorder again and again, until one sent once ``until()`` held is answered."""
        self.keys.append(key)
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            assert time.monotonic() < deadline, f"reorder {key} never acknowledged"
            settled = until()
            try:
                answer = await http.post(
                    f"/v1/me/preferences/{self.preference_id}/reorders",
                    json={"quantity": 1, "fulfiller": f"store:{FAULT_STORE}"},
                    headers={**self.headers, "Idempotency-Key": key},
                )
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if answer.status_code == 201:
                self.acknowledged.setdefault(key, set()).add(answer.json()["id"])
                self.replays += answer.headers.get("idempotent-replayed") == "true"
                if settled:
                    return
            else:
                assert answer.status_code in (409, 503), answer.text  # 409: still in flight
            await asyncio.sleep(0.05)


async def test_b_a_killed_service_loses_no_acknowledged_write_disclosure_or_reorder(serving: Stack):
    stack = serving
    stack.stop_service()  # this scenario runs the multi-process server
    stack.start_service(workers=2)
    await stack.wait_ready()
    async with httpx.AsyncClient(base_url=stack.url, timeout=REQUEST_TIMEOUT) as http:
        customer, (preference,) = await enrol(http, stack)
        conn = await stack.connect()
        try:
            await in_directory(conn, FAULT_STORE)  # the store the reorders are placed at
        finally:
            await conn.close()
        reorderer = Reorderer(customer.headers, preference["id"])
        restarted = asyncio.Event()

        async with steady_load(stack) as load:
            # Three clients send one reorder with the same key from before the kill until
            # after the restart; further keys are retried across the restart as well.
            across_the_kill = str(uuid.uuid4())
            senders = [
                asyncio.create_task(reorderer.place(http, across_the_kill, restarted.is_set))
                for _ in range(3)
            ]
            await _until(
                lambda: bool(reorderer.acknowledged),
                RECOVERY_TIMEOUT,
                "a first acknowledged reorder",
            )
            more = asyncio.create_task(_reorder_in_turn(http, reorderer, restarted))
            await asyncio.sleep(0.3)

            stack.kill_service()
            killed_at = time.monotonic()
            stack.start_service(workers=2)
            await stack.wait_ready()
            restarted.set()
            await _until(
                lambda: (
                    load.count("write", ok=True, since=killed_at) >= 5
                    and load.count("lookup", ok=True, since=killed_at) >= 5
                ),
                RECOVERY_TIMEOUT,
                "the load to be served again",
            )
            await asyncio.wait_for(asyncio.gather(*senders, more), RECOVERY_TIMEOUT)

        statuses = {a.status for a in load.answers}
        assert statuses <= {200, 201, 503}, f"unexpected answers: {statuses}"
        await assert_nothing_acknowledged_was_lost(stack, load)

        listed = await http.get("/v1/me/reorders", headers=customer.headers, params={"limit": 200})
        assert listed.status_code == 200, listed.text
        placed = [r["id"] for r in listed.json()["items"] if r["preference_id"] == preference["id"]]
    keys = list(dict.fromkeys(reorderer.keys))
    print(f"reorders: {len(keys)} keys, {reorderer.replays} replays, {len(placed)} placed")
    for key in keys:
        assert len(reorderer.acknowledged[key]) == 1, f"key {key} answered with several reorders"
    assert sorted(placed) == sorted(next(iter(ids)) for ids in reorderer.acknowledged.values())
    assert len(placed) == len(keys), "a retried Idempotency-Key made more than one reorder"


async def _reorder_in_turn(
    http: httpx.AsyncClient, reorderer: Reorderer, restarted: asyncio.Event
) -> None:
    """Fresh keys one after another, each retried until acknowledged, until after the restart."""
    while not restarted.is_set():
        await reorderer.place(http, str(uuid.uuid4()), lambda: True)
    await reorderer.place(http, str(uuid.uuid4()), lambda: True)


# --- (c) concurrent edits of one preference -----------------------------------------------------


async def test_c_concurrent_edits_of_one_preference_lose_no_update(serving: Stack):
    stack = serving
    editors = 8
    async with (
        steady_load(stack),
        httpx.AsyncClient(base_url=stack.url, timeout=REQUEST_TIMEOUT) as http,
    ):
        customer, (preference,) = await enrol(http, stack)
        path = f"/v1/me/preferences/{preference['id']}"
        conflicts = Counter[int]()

        async def add_own_attribute(editor: int) -> None:
            while True:
                read = await http.get(path, headers=customer.headers)
                if read.status_code == 503:
                    continue
                assert read.status_code == 200, read.text
                attributes = {**read.json()["attributes"], f"editor_{editor}": str(editor)}
                written = await http.patch(
                    path,
                    json={"attributes": attributes},
                    headers={**customer.headers, "If-Match": read.headers["etag"]},
                )
                if written.status_code == 200:
                    return
                assert written.status_code in (412, 503), written.text
                conflicts[written.status_code] += 1

        await asyncio.wait_for(
            asyncio.gather(*(add_own_attribute(n) for n in range(editors))), RECOVERY_TIMEOUT
        )
        final = await http.get(path, headers=customer.headers)
    print(f"edits: {editors} editors, {conflicts[412]} stale versions retried")
    body = final.json()
    missing = [n for n in range(editors) if body["attributes"].get(f"editor_{n}") != str(n)]
    assert not missing, f"lost updates from editors {missing}"
    assert body["version"] == preference["version"] + editors
