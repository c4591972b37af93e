"""Several `prefs serve` processes on one database, behind a real HAProxy."""

from __future__ import annotations

import contextlib
import csv
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.servers import PREFS, free_port

HAPROXY_MISSING = "haproxy is not installed (Debian: apt-get install haproxy)"


def haproxy_path() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


class Instance:
    """One `prefs serve` process on its own port; killed and started again at will."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(PREFS), "serve", "--port", str(self.port)],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready: {self.log.read_text()}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, requests in flight are cut off."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# A request (headers and body) must arrive whole within 10 s, or HAProxy answers 408 as prefs
# would, problem+json: prefs (uvicorn) waits for a body as long as its client keeps the
# connection, so a client that declares more than it sends would hold its connection forever.
REQUEST_TIMEOUT = [
    "    timeout http-request 10s",
    "    option http-buffer-request",
    "    http-error status 408 content-type application/problem+json string"
    """ '{"type":"urn:prefs:problem:request-timeout","title":"Request timeout","status":408,"""
    """"detail":"The request did not arrive whole within 10 s."}'""",
]


class HAProxy:
    """HAProxy on a free loopback port, round robin over ``instances``.

    Health checks on /health/ready every 300 ms (two failures take a server out, two passes put
    it back). A request is retried on another server only when its connection failed, so was
    never sent (retry-on conn-failure, option redispatch): a request already sent to a server
    that then dies may have been written, so retrying it could write twice. It fails instead,
    and the client decides (an Idempotency-Key makes the retry safe).
    """

    def __init__(self, instances: list[Instance]) -> None:
        path = haproxy_path()
        if path is None:
            raise FileNotFoundError(HAPROXY_MISSING)
        self.executable = path
        self.instances = instances
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="prefs-haproxy-"))
        self.stats_port = free_port()  # HAProxy's statistics page, on loopback
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        servers = [f"    server {each.name} 127.0.0.1:{each.port} check" for each in self.instances]
        return "\n".join(
            [
                "global",
                "    maxconn 4000",
                "defaults",
                "    mode http",
                "    timeout connect 2s",
                "    timeout client 60s",
                "    timeout server 60s",
                "    timeout http-keep-alive 10s",
                *REQUEST_TIMEOUT,
                "    retries 3",
                "    retry-on conn-failure",
                "    option redispatch 1",
                "listen stats",
                f"    bind 127.0.0.1:{self.stats_port}",
                "    stats enable",
                "    stats uri /stats",
                "frontend prefs",
                f"    bind 127.0.0.1:{self.port}",
                "    default_backend prefs",
                "backend prefs",
                "    balance roundrobin",
                "    option httpchk GET /health/ready",
                "    http-check expect status 200",
                "    default-server inter 300ms fastinter 300ms downinter 300ms fall 2 rise 2",
                *servers,
                "",
            ]
        )

    def __enter__(self) -> HAProxy:
        config = self.dir / "haproxy.cfg"
        config.write_text(self.config())
        check = subprocess.run(
            [self.executable, "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its configuration: {check.stdout}{check.stderr}")
        output = self.dir / "output.txt"
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                [self.executable, "-db", "-f", str(config)], stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 20
        # its servers up, and its frontend listening (it may start to a few ms after the checks)
        while not (all(state == "UP" for state in self.states().values()) and self.accepting()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"haproxy: servers not up: {output.read_text()}")
            time.sleep(0.1)
        return self

    def accepting(self) -> bool:
        """Whether the frontend takes connections."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stats(self) -> list[dict[str, str]]:
        """HAProxy's statistics (CSV): one row per frontend, server and backend."""
        try:
            text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        except httpx.TransportError:
            return []
        return list(csv.DictReader(text.lstrip("# ").splitlines()))

    def states(self) -> dict[str, str]:
        """Each server's status as HAProxy sees it (UP, DOWN...)."""
        return {
            row["svname"]: row["status"].split()[0]
            for row in self.stats()
            if row["pxname"] == "prefs" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def sessions(self, server: str) -> int:
        """Requests HAProxy has sent to ``server`` so far."""
        for row in self.stats():
            if row["pxname"] == "prefs" and row["svname"] == server:
                return int(row["stot"])
        return 0

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
