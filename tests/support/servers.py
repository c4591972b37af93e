"""Servers the tests talk to over real sockets."""

from __future__ import annotations

import contextlib
import fcntl
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn

from prefs.app import create_app
from prefs.serving import Protocol
from prefs.settings import Settings

# Ports this process has handed out: each one's lock file, held open (so locked) until it exits.
_RESERVED: dict[int, IO[bytes]] = {}
_LOCKS = Path(tempfile.gettempdir()) / "prefs-test-ports"


def _ephemeral_ports() -> range:
    """The kernel's range for the local ports of outgoing connections (Linux's default if the
    machine does not say)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now, for a server a test starts (its own
    or another program's, such as PgBouncer or the identity provider).

    A port the kernel picks (bind to port 0) is free only until it is handed back: another test
    process (CI runs two suites side by side) could be given the same one before this one's
    server binds it, and any outgoing connection may take it as its local port meanwhile. So the
    port is picked below the kernel's range for outgoing connections, and reserved across
    processes by a lock on a file named after it, which this process holds until it exits.
    """
    ephemeral = _ephemeral_ports()
    top = min(ephemeral.start, 32768)
    candidates = list(range(max(1024, top - 12_000), top))
    random.shuffle(candidates)
    _LOCKS.mkdir(exist_ok=True)
    for port in candidates:
        if port in _RESERVED:
            continue
        lock = (_LOCKS / f"{port}.lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another test process holds it
            lock.close()
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use by something else
                lock.close()
                continue
        _RESERVED[port] = lock
        return port
    raise RuntimeError(f"no free port below {top} on 127.0.0.1")


class LiveServer:
    """The app under uvicorn on a thread, on a real socket."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            http=Protocol,  # as `prefs serve` runs it
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app built from ``settings`` on a real socket, and a client for it (tests that need a
    server of their own: other keys, another database; `prefs serve` itself is test_serve's)."""
    with LiveServer(create_app(settings)) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            yield http


PREFS = Path(sys.executable).parent / "prefs"


@contextlib.contextmanager
def prefs_serve(env: dict[str, str], workers: int = 1) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefs serve` on a free port with ``env`` (and ``workers`` worker processes); yields its
    URL and, once it has stopped (on leaving the block), what it wrote to stdout and stderr."""
    port = free_port()
    output: dict[str, str] = {}
    process = subprocess.Popen(
        [str(PREFS), "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "prefs serve did not become ready"
            time.sleep(0.2)
        yield url, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output["stdout"], output["stderr"] = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output["stdout"], output["stderr"] = process.communicate()
