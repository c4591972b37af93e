"""`prefs serve` as an operator runs it: one command on an empty data dir, clean stop, restart."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.customer import CHINOS, bearer
from tests.support.servers import free_port

PREFS = Path(sys.executable).parent / "prefs"
START_TIMEOUT = 120  # seconds; a first start runs initdb, and CI machines can be slow


def clean_environment(**settings: str) -> dict[str, str]:
    """The caller's environment without PREFS_ settings (nor the tests' runtime dir)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PREFS_") and k != "XDG_RUNTIME_DIR"
    }
    return {**env, **settings}


def prefs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PREFS), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.stdout = ""
        self.stderr = ""

    def stop(self, sent: signal.Signals = signal.SIGTERM) -> int:
        """SIGTERM, as a process manager would send (or SIGINT: Ctrl-C), and wait for the exit."""
        self.process.send_signal(sent)
        self.stdout, self.stderr = self.process.communicate(timeout=60)
        return self.process.returncode


@contextmanager
def serving(data_dir: Path) -> Iterator[Served]:
    port = free_port()
    process = subprocess.Popen(
        [str(PREFS), "serve", "--port", str(port)],
        env=clean_environment(PREFS_DATA_DIR=str(data_dir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served = Served(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"prefs serve exited with {process.returncode}:\n{out}\n{err}")
            try:
                if httpx.get(f"{served.url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefs serve did not become ready within {START_TIMEOUT}s")
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        stop_leftover_postgres(data_dir)


def stop_leftover_postgres(data_dir: Path) -> None:
    """If a failed run left the embedded server behind, stop it (fast shutdown): leak nothing."""
    pid_file = data_dir / "pg" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def token(data_dir: Path, subject: str) -> str:
    minted = prefs(
        "token", "--subject", subject, env=clean_environment(PREFS_DATA_DIR=str(data_dir))
    )
    assert minted.returncode == 0, minted.stderr
    return minted.stdout.strip()


def test_prefs_serve_starts_on_an_empty_data_dir_stops_cleanly_and_keeps_data_across_restarts(
    tmp_path,
):
    data_dir = tmp_path / "prefs-data"
    with serving(data_dir) as first:
        ready = httpx.get(f"{first.url}/health/ready")
        assert ready.json()["status"] == "ok"
        headers = bearer(token(data_dir, "alice@example.test"))
        enrolled = httpx.post(
            f"{first.url}/v1/me", headers=headers, json={"card": "6001 2345 6789"}
        )
        assert enrolled.status_code == 201, enrolled.text
        created = httpx.post(f"{first.url}/v1/me/preferences", headers=headers, json=CHINOS)
        assert created.status_code == 201, created.text
        assert first.stop() == 0, first.stderr
        assert not (data_dir / "pg" / "postmaster.pid").exists(), (
            "the embedded PostgreSQL is still running"
        )
    assert f"listening on {first.url}" in first.stdout
    assert "prefs token --subject" in first.stdout
    for key_file in ("master.keys", "index.key", "receipt.keys", "dev-issuer.pem"):
        assert stat.S_IMODE((data_dir / key_file).stat().st_mode) == 0o600, key_file

    with serving(data_dir) as second:
        for credentials in (headers, bearer(token(data_dir, "alice@example.test"))):
            profile = httpx.get(f"{second.url}/v1/me", headers=credentials)
            assert profile.status_code == 200, profile.text
            assert profile.json()["id"] == enrolled.json()["id"]
            assert profile.json()["card"] == "600123456789"
            listed = httpx.get(f"{second.url}/v1/me/preferences", headers=credentials)
            assert listed.json()["items"] == [created.json()]
        assert second.stop(signal.SIGINT) == 0, second.stderr  # Ctrl-C stops it as cleanly
        assert not (data_dir / "pg" / "postmaster.pid").exists(), (
            "the embedded PostgreSQL is still running"
        )
    for stopped in (first, second):
        assert stopped.stdout.rstrip().endswith("prefs stopped"), stopped.stdout
        assert "Aborted" not in stopped.stderr, stopped.stderr


def test_production_with_nothing_configured_refuses_to_serve_with_one_line(tmp_path):
    result = prefs(
        "serve", env=clean_environment(PREFS_ENV="production", PREFS_DATA_DIR=str(tmp_path / "d"))
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for name in (
        "PREFS_DATABASE_URL",
        "PREFS_MASTER_KEYS",
        "PREFS_INDEX_KEY",
        "PREFS_JWT_ISSUER",
        "PREFS_RECEIPT_KEYS",
    ):
        assert name in lines[0]
    assert "listening" not in result.stdout
    assert not (tmp_path / "d").exists()


def production_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Everything production needs, on a database nothing listens at (127.0.0.1:1)."""
    jwks = tmp_path / "jwks.json"
    public_key = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    jwks.write_text(json.dumps({"keys": [{**public_key, "kid": "idp-1"}]}))
    return clean_environment(
        **{
            "PREFS_ENV": "production",
            "PREFS_DATA_DIR": str(tmp_path / "d"),
            "PREFS_DATABASE_URL": "postgresql://prefs@127.0.0.1:1/prefs",
            "PREFS_MASTER_KEYS": "1:" + "A" * 43,
            "PREFS_INDEX_KEY": "1:" + "B" * 43,
            "PREFS_JWT_ISSUER": "https://id.example-retailer.test/",
            "PREFS_JWT_AUDIENCE": "prefs-api",
            "PREFS_JWT_JWKS": str(jwks),
            "PREFS_OIDC_CLIENT_ID": "prefs-page",
            "PREFS_RECEIPT_KEYS": "1:" + "C" * 43,
            **settings,
        }
    )


def test_prefs_token_is_refused_in_production(tmp_path):
    result = prefs("token", "--subject", "alice", env=production_environment(tmp_path))
    assert result.returncode != 0
    assert "development issuer" in result.stderr
    assert result.stdout.strip() == ""
    assert not (tmp_path / "d" / "dev-issuer.pem").exists()


def refused_with_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The command failed, saying so in one line on stderr that holds ``words``; no traceback."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""
    return lines[0]


def unreachable_database() -> str:
    return f"postgresql://prefs:pw-{os.getpid()}@127.0.0.1:{free_port()}/prefs"


BAD_SETTINGS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    ({"PREFS_MASTER_KEYS": "garbage"}, ("PREFS_MASTER_KEYS", "VERSION:BASE64KEY")),
    ({"PREFS_MASTER_KEYS": "1:abcd"}, ("PREFS_MASTER_KEYS", "32 bytes")),
    ({"PREFS_INDEX_KEY": "1:abcd"}, ("PREFS_INDEX_KEY", "32 bytes")),
    (
        {
            "PREFS_JWT_ISSUER": "https://id.example-retailer.test/",
            "PREFS_JWT_AUDIENCE": "prefs-api",
            "PREFS_JWT_JWKS": "/nonexistent.json",
        },
        ("PREFS_JWT_JWKS", "/nonexistent.json"),
    ),
    ({"PREFS_JWT_JWKS": "EMPTY-KEY-SET"}, ("PREFS_JWT_JWKS", "no keys")),
    ({"PREFS_DATABASE_URL": "UNREACHABLE"}, ("PREFS_DATABASE_URL", "connection refused")),
    ({"PREFS_LOG_LEVEL": "loud"}, ("PREFS_LOG_LEVEL",)),
    ({"PREFS_DATABASE_LAYOUT": "citus"}, ("PREFS_DATABASE_LAYOUT", "single, distributed")),
]


@pytest.mark.parametrize(("bad", "words"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_a_bad_setting_stops_prefs_serve_with_one_line_before_the_database_is_touched(
    tmp_path, bad, words
):
    data_dir = tmp_path / "data"
    bad = dict(bad)
    if bad.get("PREFS_JWT_JWKS") == "EMPTY-KEY-SET":
        (tmp_path / "jwks.json").write_text('{"keys": []}')
        bad = {
            "PREFS_JWT_ISSUER": "https://id.example-retailer.test/",
            "PREFS_JWT_AUDIENCE": "prefs-api",
            "PREFS_JWT_JWKS": str(tmp_path / "jwks.json"),
        }
    if bad.get("PREFS_DATABASE_URL") == "UNREACHABLE":
        bad["PREFS_DATABASE_URL"] = unreachable_database()
    result = prefs(
        "serve",
        "--port",
        str(free_port()),
        env=clean_environment(PREFS_DATA_DIR=str(data_dir), **bad),
    )
    line = refused_with_one_line(result, *words)
    assert "Traceback" not in result.stderr
    assert "pw-" not in line, "the database password was printed"
    assert not (data_dir / "pg").exists(), "the embedded database was started (and migrated)"


@pytest.mark.parametrize("name", ["master.keys", "index.key", "receipt.keys", "dev-issuer.pem"])
def test_a_damaged_development_key_file_stops_prefs_serve_with_one_line_naming_it(tmp_path, name):
    """A key file left empty (a crash while it was written, before keys were written aside and
    linked into place) is named, before the database starts: never a traceback per worker."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    (data_dir / name).write_text("")
    result = prefs(
        "serve", "--port", str(free_port()), env=clean_environment(PREFS_DATA_DIR=str(data_dir))
    )
    refused_with_one_line(result, str(data_dir / name))
    assert "Traceback" not in result.stderr
    assert not (data_dir / "pg").exists(), "the embedded database was started (and migrated)"
    assert (data_dir / name).read_text() == "", "the damaged key was replaced"


def test_production_refuses_one_key_for_both_keyrings_with_one_line(tmp_path):
    key = "1:" + "A" * 43
    env = production_environment(tmp_path, PREFS_MASTER_KEYS=key, PREFS_INDEX_KEY=key)
    line = refused_with_one_line(prefs("serve", env=env), "PREFS_INDEX_KEY", "PREFS_MASTER_KEYS")
    assert "A" * 8 not in line


COMMANDS = [
    ["migrate"],
    ["credentials", "create", "--kind", "pos", "--name", "Till", "--store", "1"],
    ["credentials", "list"],
    ["consent", "verify"],
    ["keys", "status"],
    ["keys", "rotate"],
    ["keys", "reindex"],
    ["erasures", "export"],
    ["purge"],
    ["token", "--subject", "alice"],
    ["openapi", "--output", "OUTPUT"],
]


def test_every_command_refuses_bad_keys_and_an_unreachable_database_with_one_line(tmp_path):
    data_dir = tmp_path / "data"
    for command in COMMANDS:
        args = [str(tmp_path / "openapi.json") if arg == "OUTPUT" else arg for arg in command]
        for bad, words in (BAD_SETTINGS[0], BAD_SETTINGS[1]):
            result = prefs(*args, env=clean_environment(PREFS_DATA_DIR=str(data_dir), **bad))
            refused_with_one_line(result, *words)
        if command[0] not in ("token", "openapi"):  # these two never reach the database
            unreachable = clean_environment(
                PREFS_DATA_DIR=str(data_dir), PREFS_DATABASE_URL=unreachable_database()
            )
            refused_with_one_line(prefs(*args, env=unreachable), "PREFS_DATABASE_URL")
    assert not (data_dir / "pg").exists()
    assert not (tmp_path / "openapi.json").exists()


def test_prefs_serve_on_a_port_in_use_says_so_in_one_line_before_anything_else(tmp_path):
    data_dir = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = prefs(
            "serve", "--port", str(port), env=clean_environment(PREFS_DATA_DIR=str(data_dir))
        )
    refused_with_one_line(result, f"port {port}", "in use")
    assert not (data_dir / "pg").exists(), "the embedded database was started (and migrated)"


def test_the_banner_stops_saying_the_till_lookup_answers_404_once_the_demo_customer_shares(
    tmp_path,
):
    data_dir = tmp_path / "prefs-data"
    with serving(data_dir) as first:
        demo = json.loads((data_dir / "demo.json").read_text())
        lookup = {"headers": bearer(demo["till_key"]), "json": {"card": demo["card"]}}
        assert httpx.post(f"{first.url}/v1/pos/lookup", **lookup).status_code == 404
        shared = httpx.put(
            f"{first.url}/v1/me/consents/pos",
            headers=bearer(token(data_dir, "demo@prefs.example")),
            json={"fields": ["product", "attributes"]},
        )
        assert shared.status_code in (200, 201), shared.text
        assert first.stop() == 0, first.stderr
    assert "answers 404 until the demo customer" in first.stdout

    with serving(data_dir) as second:
        assert httpx.post(f"{second.url}/v1/pos/lookup", **lookup).status_code == 200
        assert second.stop() == 0, second.stderr
    assert "demo till key" in second.stdout
    assert "answers 404 until" not in second.stdout, second.stdout  # (a card may hold "404")
