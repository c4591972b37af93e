"""Servers the tests talk to over real sockets."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from prefs.app import create_app
from prefs.serving import Protocol
from prefs.settings import Settings


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
