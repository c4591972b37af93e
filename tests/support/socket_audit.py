"""No outbound traffic (issue 7, item 5): every destination the test process reaches for.

The service runs in the test process (the `server` thread), so an audit hook sees every socket
it connects, every name it looks up and every URL urllib fetches. Event loops written in C
(uvloop, which uvicorn picks) connect without raising audit events, so the process's open
connections are also sampled: whenever a socket object is made off the main thread (uvloop wraps
each new connection in one) and every 0.2 s. At the end of the session every destination must be
the test database, loopback (test servers and `prefs serve` subprocesses), a PostgreSQL unix
socket or the identity provider's key set as fetched by PyJWKClient; otherwise the run fails
(conftest.py installs this and checks it; tests/test_no_outbound.py checks the same midway).
"""

from __future__ import annotations

import contextlib as _contextlib
import ipaddress as _ipaddress
import os
import socket
import sys as _sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit as _urlsplit

from prefs import db


@dataclass(frozen=True)
class SocketUse:
    """One destination the test process reached for (deduplicated)."""

    event: str  # socket.connect, socket.sendto, socket.getaddrinfo, urllib.Request, sampled
    host: str  # an IP address, a host name, or a unix socket path
    port: int | None
    via_jwks: bool  # made by PyJWKClient fetching the configured key set


_AUDITED_EVENTS = frozenset(
    {
        "socket.connect",
        "socket.sendto",
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyaddr",
        "urllib.Request",
    }
)
_in_audit = threading.local()


def _from_jwks_client() -> bool:
    frame: Any = _sys._getframe()
    while frame is not None:
        if frame.f_code.co_filename.replace("\\", "/").endswith("jwt/jwks_client.py"):
            return True
        frame = frame.f_back
    return False


def _sample_connections(uses: set[SocketUse]) -> None:
    """Record the remote end of every connected inet socket this process holds right now."""
    import psutil  # a declared test dependency: without it this audit would see nothing

    for connection in psutil.Process().net_connections(kind="inet"):
        if connection.raddr:
            uses.add(SocketUse("sampled", connection.raddr.ip, connection.raddr.port, False))


def _destination(event: str, args: tuple[Any, ...]) -> tuple[str, int | None]:
    address: Any = args[1] if event in ("socket.connect", "socket.sendto") else args[0]
    if event == "urllib.Request":
        parts = _urlsplit(str(address))
        host, port = parts.hostname or "", parts.port
    elif event == "socket.getaddrinfo":
        host, port = address, args[1]
    elif isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    else:
        host, port = address, None
    if isinstance(host, bytes):
        host = host.decode("utf-8", "replace")
    if isinstance(port, bytes):
        port = port.decode("ascii", "replace")
    if isinstance(port, str):
        port = int(port) if port.isdigit() else None
    return str(host), port


def _audit_hook(uses: set[SocketUse]) -> Any:
    def record_socket_use(event: str, args: tuple[Any, ...]) -> None:
        if (event not in _AUDITED_EVENTS and event != "socket.__new__") or getattr(
            _in_audit, "active", False
        ):
            return
        _in_audit.active = True
        try:
            with _contextlib.suppress(Exception):  # never break the call being watched
                if event != "socket.__new__":
                    uses.add(SocketUse(event, *_destination(event, args), _from_jwks_client()))
                elif threading.current_thread() is not threading.main_thread():
                    _sample_connections(uses)
        finally:
            _in_audit.active = False

    return record_socket_use


def _sample_periodically(uses: set[SocketUse], stop: threading.Event) -> None:
    while not stop.wait(0.2):
        _in_audit.active = True
        try:
            with _contextlib.suppress(Exception):
                _sample_connections(uses)
        finally:
            _in_audit.active = False


SOCKET_USES: set[SocketUse] = set()
_stop = threading.Event()
_installed = False


def install() -> None:
    """Start recording (once per process: an audit hook cannot be removed)."""
    global _installed
    if _installed:
        return
    _installed = True
    _sys.addaudithook(_audit_hook(SOCKET_USES))
    threading.Thread(
        target=_sample_periodically,
        args=(SOCKET_USES, _stop),
        name="outbound-sampler",
        daemon=True,
    ).start()


def finish() -> list[SocketUse]:
    """Stop sampling, take a last sample, and return every destination not allowed."""
    _stop.set()
    _sample_connections(SOCKET_USES)
    return outbound_violations()


def _database_endpoints() -> set[tuple[str, int]]:
    """The external test database's host and port, by name and by address."""
    url = os.environ.get("PREFS_TEST_DATABASE_URL")
    parts = _urlsplit(db.asyncpg_dsn(url)) if url else None
    if parts is None or not parts.hostname:
        return set()
    port = parts.port or 5432
    endpoints = {(parts.hostname, port)}
    with _contextlib.suppress(OSError):
        endpoints |= {(str(info[4][0]), port) for info in socket.getaddrinfo(parts.hostname, port)}
    return endpoints


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def outbound_violations(uses: set[SocketUse] | None = None) -> list[SocketUse]:
    """Every recorded destination that is not the database, loopback or the JWKS fetch."""
    database = _database_endpoints()
    database_hosts = {host for host, _ in database}
    wrong = []
    for use in sorted(set(SOCKET_USES) if uses is None else uses, key=repr):
        if use.host.startswith(("/", "\0")):  # a unix socket: only PostgreSQL's
            allowed = Path(use.host).name.startswith(".s.PGSQL.")
        else:
            looked_up = use.event.startswith("socket.get")
            allowed = (
                use.via_jwks
                or _is_loopback(use.host)
                or (use.host, use.port) in database
                or (looked_up and use.host in database_hosts)
            )
        if not allowed:
            wrong.append(use)
    return wrong
