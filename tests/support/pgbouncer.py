"""A real PgBouncer in transaction mode in front of the suite's PostgreSQL.

Debian's pgbouncer (1.18: no protocol-level prepared statements) listens on a free loopback
port and passes every database name through to the server the suite uses, the embedded one
(over its unix socket) or the machine's. Its pool is small on purpose: with two server
connections, transactions from different client connections take turns on the same server
sessions, so anything the service left in a session would be met by someone else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.support.database import with_database
from tests.support.servers import free_port


def pgbouncer_path() -> str | None:
    """Where pgbouncer is installed (Debian puts it in /usr/sbin, often not on PATH)."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


MISSING = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"


def _server(url: str) -> tuple[str, int, str]:
    """The host (or unix socket folder), port and user of a PostgreSQL URL."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    return host, parts.port or 5432, parts.username or "postgres"


def _run_as() -> str | None:
    """PgBouncer will not run as root: the embedded server's own user (it can reach that
    server's socket), else nobody."""
    if os.geteuid() != 0:
        return None
    for name in ("pgserver", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


class PgBouncer:
    """pgbouncer in transaction mode on 127.0.0.1, in front of the server at ``server_url``."""

    def __init__(self, server_url: str, pool_size: int = 2) -> None:
        path = pgbouncer_path()
        if path is None:
            raise FileNotFoundError(MISSING)
        self.executable = path
        self.server_url = server_url
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prefs-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """The URL that reaches ``database_url``'s database through this pgbouncer."""
        _, _, user = _server(database_url)
        name = urlsplit(database_url).path.lstrip("/") or user
        return with_database(f"postgresql://{user}@127.0.0.1:{self.port}/postgres", name)

    def _write_config(self) -> Path:
        host, port, user = _server(self.server_url)
        (self.dir / "users.txt").write_text(f'"{user}" ""\n')
        config = self.dir / "pgbouncer.ini"
        config.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host={host} port={port}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {self.dir / 'users.txt'}",
                    "pool_mode = transaction",
                    f"default_pool_size = {self.pool_size}",
                    "min_pool_size = 0",
                    "reserve_pool_size = 0",
                    "max_client_conn = 2000",
                    "max_db_connections = 0",
                    # a client waits this long for a server connection before an error
                    "query_wait_timeout = 60",
                    f"logfile = {self.dir / 'pgbouncer.log'}",
                    f"pidfile = {self.dir / 'pgbouncer.pid'}",
                    "log_connections = 0",
                    "log_disconnections = 0",
                    "",
                ]
            )
        )
        user_name = _run_as()
        if user_name is not None:
            entry = pwd.getpwnam(user_name)
            for each in (self.dir, *self.dir.iterdir()):
                os.chown(each, entry.pw_uid, entry.pw_gid)
        return config

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "pgbouncer.log").read_text()
        return ""

    def __enter__(self) -> PgBouncer:
        config = self._write_config()
        user_name = _run_as()
        command = [self.executable, *(["-u", user_name] if user_name else []), str(config)]
        output = self.dir / "output.txt"
        with output.open("wb") as sink:
            self.process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                said = output.read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited: {said}{self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer did not listen: {self.log()}")
            time.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer(server_url: str, pool_size: int = 2) -> Iterator[PgBouncer]:
    with PgBouncer(server_url, pool_size) as bouncer:
        yield bouncer


def main() -> None:
    """`python -m tests.support.pgbouncer SERVER_URL DATABASE_URL [POOL_SIZE]`: run PgBouncer in
    front of SERVER_URL until SIGTERM or SIGINT, after printing the URL that reaches
    DATABASE_URL's database through it (the Locust smoke run uses this)."""
    import sys

    server_url, database_url = sys.argv[1], sys.argv[2]
    pool_size = int(sys.argv[3]) if len(sys.argv) > 3 else 2

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    with PgBouncer(server_url, pool_size) as bouncer:
        print(bouncer.url(database_url), flush=True)
        while bouncer.process is not None and bouncer.process.poll() is None:
            time.sleep(0.5)
        raise SystemExit(f"pgbouncer stopped: {bouncer.log()}")


if __name__ == "__main__":
    main()
