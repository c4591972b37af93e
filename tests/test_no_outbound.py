"""No outbound traffic: the service talks to its database (and the identity provider's key set,
when one is configured by URL) and to nobody else; the code holds no message sender.

The whole session is watched by the audit hook and connection sampler at the end of
tests/conftest.py, which fails the run if anything reached further; the tests here check that
the watch works and that nothing so far went astray.
"""

from __future__ import annotations

import ast
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from prefs import db
from tests.support.customer import CHINOS
from tests.support.paths import repo_root
from tests.support.socket_audit import SOCKET_USES, SocketUse, _audit_hook, outbound_violations

SOURCE = repo_root() / "src" / "prefs"

# Libraries that send mail, SMS, push notifications or webhooks, or open network connections of
# their own. The service reaches its database through asyncpg and nothing else.
NETWORK_CLIENTS = {
    "smtplib",
    "smtpd",
    "aiosmtplib",
    "email",
    "imaplib",
    "poplib",
    "ftplib",
    "telnetlib",
    "nntplib",
    "xmlrpc",
    "http.client",
    "urllib.request",
    "urllib3",
    "requests",
    "httpx",
    "httpcore",
    "aiohttp",
    "pycurl",
    "websocket",
    "websockets",
    "grpc",
    "twilio",
    "vonage",
    "nexmo",
    "messagebird",
    "plivo",
    "sendgrid",
    "mailgun",
    "postmarker",
    "yagmail",
    "flask_mail",
    "fastapi_mail",
    "firebase_admin",
    "pyfcm",
    "apns2",
    "aioapns",
    "pywebpush",
    "onesignal_sdk",
    "pusher",
    "slack_sdk",
    "discord",
    "telegram",
    "boto3",
    "botocore",
    "aiobotocore",
    "paho",
    "pika",
    "aio_pika",
    "kafka",
    "aiokafka",
    "confluent_kafka",
    "nats",
    "redis",
    "zmq",
    "socketio",
    "socket",
}
# Calls that open a connection by hand.
RAW_CONNECTS = {
    "create_connection",
    "open_connection",
    "open_unix_connection",
    "urlopen",
    "create_datagram_endpoint",
    "sock_connect",
    "sendmail",
    "send_message",
}
# Names that would give a sender away, whatever library it used.
SENDER_NAMES = re.compile(
    r"smtp|sendmail|send_?mail|send_?email|send_?sms|webhook|twilio|"
    r"firebase|\bfcm\b|apns|push_?notif|notify_?(customer|user)",
    re.IGNORECASE,
)
JWKS_FETCHER = SOURCE / "auth.py"  # PyJWKClient fetching PREFS_JWT_JWKS, when it is a URL
LISTENER = SOURCE / "cli.py"  # `prefs serve` binds its own port before it starts anything
LISTENER_NAMES = {"socket", "AF_INET", "AF_INET6", "SOL_SOCKET", "SO_REUSEADDR"}


def python_files() -> list[Path]:
    files = sorted(SOURCE.rglob("*.py"))
    assert files
    return files


def test_the_code_imports_no_mail_sms_push_webhook_or_http_client():
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for module in modules:
                parts = module.split(".")
                if module == "socket" and path == LISTENER:
                    continue  # what it takes from the module: the next test
                if any(".".join(parts[:n]) in NETWORK_CLIENTS for n in range(1, len(parts) + 1)):
                    found.append(f"{path.relative_to(SOURCE)}:{node.lineno} imports {module}")
    assert not found, "\n".join(found)


def test_the_only_socket_the_code_makes_is_the_listener_prefs_serve_binds():
    """cli.py takes from `socket` only what a listening TCP socket needs (no connect, no
    datagram, no name lookup); the audit at the end of the session watches what it does."""
    tree = ast.parse(LISTENER.read_text(encoding="utf-8"))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "socket"
    }
    assert used, "cli.py no longer uses socket: drop LISTENER"
    assert used <= LISTENER_NAMES, used - LISTENER_NAMES
    assert not [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "socket"
    ], "cli.py imports names from socket directly: keep them behind `socket.`"


def test_the_code_opens_no_connection_by_hand_and_names_no_sender():
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        where = path.relative_to(SOURCE)
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            if name is None:
                continue
            if name in RAW_CONNECTS:
                found.append(f"{where}:{node.lineno} calls {name}")
            elif SENDER_NAMES.search(name):
                found.append(f"{where}:{node.lineno} names {name}")
            elif name == "PyJWKClient" and path != JWKS_FETCHER:
                found.append(f"{where}:{node.lineno} fetches a key set outside auth.py")
    assert not found, "\n".join(found)


def test_the_only_url_the_code_fetches_is_the_configured_key_set():
    """auth.py hands PREFS_JWT_JWKS to PyJWKClient only when it is a URL; no URL is hard-coded."""
    found = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for url in re.findall(
                    r"\b(?:https?|wss?|smtps?|ftp|mqtt|amqps?)://[^\s\"']+", node.value
                ):
                    host = urlsplit(url).hostname
                    if host not in (None, "", "localhost", "127.0.0.1"):
                        found.append(f"{path.relative_to(SOURCE)}:{node.lineno} {url}")
    assert not found, "\n".join(found)


def test_the_audit_classifies_destinations_as_the_guarantee_says():
    allowed = {
        SocketUse("socket.connect", "127.0.0.1", 8000, False),
        SocketUse("socket.connect", "::1", 8000, False),
        SocketUse("socket.getaddrinfo", "localhost", 8000, False),
        SocketUse("socket.connect", "/run/pg/.s.PGSQL.5432", None, False),
        SocketUse("socket.connect", "203.0.113.7", 443, True),  # the JWKS fetch
        SocketUse("urllib.Request", "id.example-retailer.test", None, True),
    }
    refused = {
        SocketUse("socket.connect", "198.51.100.25", 25, False),  # someone's SMTP server
        SocketUse("socket.getaddrinfo", "hooks.example.com", 443, False),
        SocketUse("urllib.Request", "fcm.googleapis.com", None, False),
        SocketUse("sampled", "192.0.2.80", 443, False),
        SocketUse("socket.connect", "/var/run/docker.sock", None, False),
        SocketUse("socket.sendto", "8.8.8.8", 53, False),
    }
    assert outbound_violations(allowed) == []
    assert set(outbound_violations(allowed | refused)) == refused


def test_the_audit_hook_records_what_it_is_shown():
    seen: set[SocketUse] = set()
    hook = _audit_hook(seen)
    hook("socket.connect", (None, ("198.51.100.25", 25)))
    hook("socket.getaddrinfo", ("smtp.example.com", 587, 0, 0, 0))
    hook("socket.connect", (None, "/run/x/.s.PGSQL.5432"))
    hook("urllib.Request", ("https://hooks.example.com/notify", None, {}, "POST"))
    hook("open", ("/etc/passwd", "r", 0))
    assert seen == {
        SocketUse("socket.connect", "198.51.100.25", 25, False),
        SocketUse("socket.getaddrinfo", "smtp.example.com", 587, False),
        SocketUse("socket.connect", "/run/x/.s.PGSQL.5432", None, False),
        SocketUse("urllib.Request", "hooks.example.com", None, False),
    }


async def test_the_watch_sees_the_test_client_and_the_services_database_connections(
    server, database, client
):
    assert (await client.get("/health/ready")).status_code == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass
    assert SocketUse("socket.connect", "127.0.0.1", server.port, False) in SOCKET_USES
    external = os.environ.get("PREFS_TEST_DATABASE_URL")
    if external:
        # The service connects on uvloop, which raises no audit event: the sampler must see it.
        parts = urlsplit(db.asyncpg_dsn(database.url))
        port = parts.port or 5432
        sampled = {use.port for use in SOCKET_USES if use.event == "sampled"}
        assert port in sampled, sorted(SOCKET_USES, key=repr)
    else:  # the embedded server listens on a unix socket; the test's own connections show it
        assert any(
            Path(use.host).name.startswith(".s.PGSQL.")
            for use in SOCKET_USES
            if use.event == "socket.connect"
        ), sorted(SOCKET_USES, key=repr)


async def test_nothing_in_this_process_has_reached_beyond_the_database_and_loopback(
    client, new_customer
):
    customer = await new_customer(card="6001 2345 6789 0123")
    kept = await client.post("/v1/me/preferences", headers=customer.headers, json=CHINOS)
    assert kept.status_code == 201, kept.text
    assert (await client.get("/v1/me/export", headers=customer.headers)).status_code == 200
    wrong = outbound_violations()
    assert not wrong, "\n".join(f"{use.event} {use.host}:{use.port}" for use in wrong)
