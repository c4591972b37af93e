"""Environment → one frozen settings object, read once at start."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
import msgspec

from prefs.crypto import Keyring, KeyringError

Environment = Literal["development", "production"]
DEV_ISSUER = "prefs-dev"
DEV_AUDIENCE = "prefs"
TOKEN_ALGORITHMS = ("EdDSA", "ES256", "RS256")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(Exception):
    """The environment cannot make a working service; the message is one line saying why."""


class LogSettings(msgspec.Struct, frozen=True, kw_only=True):
    level: str = "INFO"
    json_lines: bool = True
    request_log: bool = True  # one line per request, on the `prefs.requests` logger


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    env: Environment
    data_dir: Path
    database_url: str | None
    master_keys: str
    index_keys: str
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_jwks: str | None
    dev_issuer: bool
    # the page signs customers in with this OpenID Connect provider (None: not configured)
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_scopes: str = "openid"
    oidc_redirect_path: str = "/"
    receipt_keys: str  # Ed25519 keys signing receipts, a keyring like the others
    controller: str = "prefs"
    # What receipts say of the controller and the law they are given under (Kantara v1.1).
    controller_contact: str
    controller_email: str
    controller_phone: str
    controller_address: str
    controller_url: str | None
    jurisdiction: str
    policy_url: str
    k_anonymity: int = 10
    insights_epsilon: float = 1.0
    insights_reads_per_day: int = 100
    customer_requests_per_minute: int = 600
    checkout_code_ttl_seconds: int = 300
    idempotency_ttl_seconds: int = 86_400
    access_log_retention_days: int = 400
    pool_min_size: int = 2
    pool_max_size: int = 16
    # what stands between the service and PostgreSQL: "none", or a pooler in transaction mode
    # (PgBouncer's pool_mode = transaction), where a connection is ours for one transaction only
    database_pooler: str = "none"
    # how the tables are laid out: "single" (one PostgreSQL) or "distributed" (a Citus cluster,
    # docs/scale-out.md), where the till's lookup is sent as statements each of one shard group
    database_layout: str = "single"
    max_body_bytes: int = 65_536
    purge_interval_seconds: int = 300
    expiry_interval_seconds: int = 60
    lookup_misses_per_minute_per_key: int = 30
    lookup_misses_per_minute_per_store: int = 120
    lookup_batch_max: int = 64
    lookup_batches_in_flight: int = 1
    partner_accepted_window_days: int = 30
    partner_open_proposals: int = 3
    store_waiting_reorders: int = 20
    partner_proposal_max_quantity: int = 5
    log: LogSettings = msgspec.field(default_factory=LogSettings)

    @property
    def dev_issuer_key_path(self) -> Path:
        return self.data_dir / "dev-issuer.pem"


def _int(environ: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}")
    return value


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name} must be a positive, finite number")
    return value


def log_settings(
    environ: Mapping[str, str] | None = None, *, terminal: bool | None = None
) -> LogSettings:
    """The logging settings alone: the `prefs` command sets up its logs before anything else.

    Unless PREFS_LOG_FORMAT says, logs are JSON lines, except in development on a terminal
    (``terminal``: stderr is one), where a person reads them: text.
    """
    environ = os.environ if environ is None else environ
    if terminal is None:
        terminal = sys.stderr.isatty()
    level = (environ.get("PREFS_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise SettingsError("PREFS_LOG_LEVEL must be one of " + ", ".join(LOG_LEVELS))
    development = environ.get("PREFS_ENV", "development") != "production"
    log_format = environ.get("PREFS_LOG_FORMAT") or ("text" if development and terminal else "json")
    if log_format not in ("json", "text"):
        raise SettingsError("PREFS_LOG_FORMAT must be 'json' or 'text'")
    request_log = environ.get("PREFS_REQUEST_LOG") or "on"
    if request_log not in ("on", "off"):
        raise SettingsError("PREFS_REQUEST_LOG must be 'on' or 'off'")
    return LogSettings(
        level=level, json_lines=log_format == "json", request_log=request_log == "on"
    )


def _keyring(setting: str, name: str) -> Keyring:
    try:
        return Keyring.parse(setting, name)
    except KeyringError as error:
        raise SettingsError(str(error)) from None


def _check_database_url(url: str) -> None:
    """Only the scheme: the rest (hosts, options) is asyncpg's to read, and may hold a password."""
    scheme = url.partition("://")[0].split("+")[0].lower()
    if "://" not in url or scheme not in ("postgresql", "postgres"):
        raise SettingsError("PREFS_DATABASE_URL must be a postgresql:// URL")


def _check_key_set_file(source: str) -> None:
    """A JWKS file must exist, be a JSON Web Key Set, and hold a key tokens can be checked with."""
    name = "PREFS_JWT_JWKS"
    try:
        text = Path(source).read_text()
    except FileNotFoundError:
        raise SettingsError(f"{name}: there is no file {source}") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not text"
        raise SettingsError(f"{name}: cannot read {source} ({reason})") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise SettingsError(f"{name}: {source} is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise SettingsError(f'{name}: {source} is not a JSON Web Key Set (no "keys" list)')
    if not keys:
        raise SettingsError(f"{name}: {source} holds no keys")
    try:
        usable = jwt.PyJWKSet(keys).keys
    except jwt.PyJWKSetError:
        usable = []
    if not any(key.algorithm_name in TOKEN_ALGORITHMS for key in usable):
        raise SettingsError(
            f"{name}: {source} holds no key tokens can be checked with "
            f"({', '.join(TOKEN_ALGORITHMS)} public keys)"
        )


def _new_keyring_entry(version: int) -> str:
    return f"{version}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}"


def create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The content of ``path``, written (owner-only) with what ``make`` returns if it does not
    exist yet (a new key is made only then).

    Several processes may start at once on a new data dir (``prefs serve --workers 2``): the
    file appears whole or not at all (written aside, then linked into place, which fails if
    another process linked first), so no process reads a half-written key, and all read the
    same one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(make())
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(scratch, path)
            except FileExistsError:
                pass  # another process's key is the key
            else:  # the link survives a crash too, or a later start would make another key
                directory = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
        finally:
            scratch.unlink()
    return path.read_bytes()


EMBEDDED_PGDATA = "pg"  # the embedded PostgreSQL's files, under the data dir


def _private_data_dir(data_dir: Path) -> None:
    """Make the data dir owner-only, only before the embedded PostgreSQL first started in it:
    run as its own user when prefs runs as root, it opens the dir for that user to traverse on
    its first start, and must find it so after, also when a later release adds a key file."""
    if not (data_dir / EMBEDDED_PGDATA).exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_dir.chmod(0o700)


def _dev_secret(data_dir: Path, name: str) -> str:
    """Read a development key file, creating it (owner-only) on first use."""
    path = data_dir / name
    if not path.exists():
        _private_data_dir(data_dir)
    return create_once(path, lambda: (_new_keyring_entry(1) + "\n").encode()).decode().strip()


def _oidc(
    environ: Mapping[str, str], env: str, jwt_issuer: str | None, jwt_audience: str | None
) -> dict[str, Any]:
    """How the page signs customers in: the provider, the page's client id, scopes and the path
    the provider sends them back to. Production needs it: without it the page has no sign-in."""
    client_id = environ.get("PREFS_OIDC_CLIENT_ID") or None
    issuer = environ.get("PREFS_OIDC_ISSUER") or jwt_issuer
    scopes = " ".join((environ.get("PREFS_OIDC_SCOPES") or "openid").split())
    redirect_path = environ.get("PREFS_OIDC_REDIRECT_PATH") or "/"
    if client_id is None:  # development only: production refuses to start without it
        return {"oidc_issuer": None, "oidc_client_id": None}
    if issuer is None:
        raise SettingsError("PREFS_OIDC_CLIENT_ID needs PREFS_OIDC_ISSUER (or PREFS_JWT_ISSUER)")
    url = urlsplit(issuer)
    loopback = url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost", "::1")
    if (url.scheme != "https" and not (loopback and env == "development")) or not url.hostname:
        raise SettingsError(
            "PREFS_OIDC_ISSUER must be an https:// URL (http:// only on loopback in development)"
        )
    if "openid" not in scopes.split():
        raise SettingsError("PREFS_OIDC_SCOPES must include openid")
    # a browser reads "\\" as "/" and drops tabs: only plain path characters, never "//"
    if not re.fullmatch(r"/[A-Za-z0-9._~/-]*", redirect_path) or "//" in redirect_path:
        raise SettingsError("PREFS_OIDC_REDIRECT_PATH must be a path on this service, like /")
    if jwt_audience is not None and jwt_audience == client_id:
        # the API would take the page's ID token (audience: the client) for an access token
        raise SettingsError(
            "PREFS_JWT_AUDIENCE must not be PREFS_OIDC_CLIENT_ID: the API's audience is the API, "
            "not the page"
        )
    return {
        "oidc_issuer": issuer,  # exactly as the provider names itself in its discovery document
        "oidc_client_id": client_id,
        "oidc_scopes": scopes,
        "oidc_redirect_path": redirect_path,
    }


POOLERS = ("none", "transaction")


def database_pooler(environ: Mapping[str, str]) -> str:
    """PREFS_DATABASE_POOLER: ``none`` (connections straight to PostgreSQL) or ``transaction``
    (a pooler such as PgBouncer in transaction mode in between)."""
    pooler = environ.get("PREFS_DATABASE_POOLER", "").strip() or "none"
    if pooler not in POOLERS:
        raise SettingsError("PREFS_DATABASE_POOLER must be one of " + ", ".join(POOLERS))
    return pooler


LAYOUTS = ("single", "distributed")


def database_layout(environ: Mapping[str, str]) -> str:
    """PREFS_DATABASE_LAYOUT: ``single`` (one PostgreSQL: the till's lookup is one statement) or
    ``distributed`` (a cluster: it is routed first, at the cost of a round trip per batch)."""
    layout = environ.get("PREFS_DATABASE_LAYOUT", "").strip() or "single"
    if layout not in LAYOUTS:
        raise SettingsError("PREFS_DATABASE_LAYOUT must be one of " + ", ".join(LAYOUTS))
    return layout


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What a command that only reads and writes the database needs: no keys (the catalogue
    import, which a batch job runs, should not hold the keys that open customers' data)."""

    data_dir: Path
    database_url: str | None
    database_pooler: str


def database_settings(environ: Mapping[str, str] | None = None) -> DatabaseSettings:
    """The database settings alone; production needs PREFS_DATABASE_URL, and nothing else."""
    environ = os.environ if environ is None else environ
    env = environ.get("PREFS_ENV", "development")
    if env not in ("development", "production"):
        raise SettingsError("PREFS_ENV must be 'development' or 'production'")
    database_url = environ.get("PREFS_DATABASE_URL") or None
    if database_url is None and env == "production":
        raise SettingsError("production needs PREFS_DATABASE_URL (see README, section Settings)")
    data_dir = Path(environ.get("PREFS_DATA_DIR", ".prefs")).resolve()
    if database_url is None:
        _private_data_dir(data_dir)  # the embedded PostgreSQL may start there first
    else:
        _check_database_url(database_url)
    return DatabaseSettings(
        data_dir=data_dir,
        database_url=database_url,
        database_pooler=database_pooler(environ),
    )


def _text(environ: Mapping[str, str], name: str, default: str) -> str:
    """A text setting, stripped; unset or empty gives the default."""
    return environ.get(name, "").strip() or default


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment; development fills in keys under the data dir."""
    environ = os.environ if environ is None else environ
    env = environ.get("PREFS_ENV", "development")
    if env not in ("development", "production"):
        raise SettingsError("PREFS_ENV must be 'development' or 'production'")
    data_dir = Path(environ.get("PREFS_DATA_DIR", ".prefs")).resolve()
    database_url = environ.get("PREFS_DATABASE_URL") or None
    master_keys = environ.get("PREFS_MASTER_KEYS") or None
    index_keys = environ.get("PREFS_INDEX_KEY") or None
    jwt_issuer = environ.get("PREFS_JWT_ISSUER") or None
    jwt_audience = environ.get("PREFS_JWT_AUDIENCE") or None
    jwt_jwks = environ.get("PREFS_JWT_JWKS") or None
    receipt_keys = environ.get("PREFS_RECEIPT_KEYS") or None

    if env == "production":
        missing = [
            name
            for name, value in (
                ("PREFS_DATABASE_URL", database_url),
                ("PREFS_MASTER_KEYS", master_keys),
                ("PREFS_INDEX_KEY", index_keys),
                ("PREFS_JWT_ISSUER", jwt_issuer),
                ("PREFS_JWT_AUDIENCE", jwt_audience),
                ("PREFS_JWT_JWKS", jwt_jwks),
                # without it the page has no way to sign customers in
                ("PREFS_OIDC_CLIENT_ID", environ.get("PREFS_OIDC_CLIENT_ID") or None),
                ("PREFS_RECEIPT_KEYS", receipt_keys),
            )
            if value is None
        ]
        if missing:
            raise SettingsError(
                "production needs " + ", ".join(missing) + " (see README, section Settings)"
            )
        if jwt_jwks and "://" in jwt_jwks and not jwt_jwks.startswith("https://"):
            # keys fetched over plain http could be swapped in transit, and any token accepted
            raise SettingsError(
                "PREFS_JWT_JWKS must be a file path or an https:// URL in production"
            )
    if (jwt_issuer is None) != (jwt_jwks is None) or (jwt_issuer and not jwt_audience):
        raise SettingsError(
            "PREFS_JWT_ISSUER, PREFS_JWT_AUDIENCE and PREFS_JWT_JWKS must be set together"
        )
    if database_url is not None:
        _check_database_url(database_url)
    if jwt_jwks is not None and not jwt_jwks.startswith(("https://", "http://")):
        _check_key_set_file(jwt_jwks)
    master = _keyring(master_keys, "PREFS_MASTER_KEYS") if master_keys else None
    index = _keyring(index_keys, "PREFS_INDEX_KEY") if index_keys else None
    if env == "development":
        if master is None:
            master_keys = _dev_secret(data_dir, "master.keys")
            master = _keyring(
                master_keys, f"{data_dir / 'master.keys'} (PREFS_MASTER_KEYS is unset)"
            )
        if index is None:
            index_keys = _dev_secret(data_dir, "index.key")
            index = _keyring(index_keys, f"{data_dir / 'index.key'} (PREFS_INDEX_KEY is unset)")
    receipt_source = "PREFS_RECEIPT_KEYS"
    if env == "development" and receipt_keys is None:
        receipt_keys = _dev_secret(data_dir, "receipt.keys")
        receipt_source = f"{data_dir / 'receipt.keys'} (PREFS_RECEIPT_KEYS is unset)"
    assert master is not None and index is not None
    oidc = _oidc(environ, env, jwt_issuer, jwt_audience)
    assert master_keys is not None and index_keys is not None and receipt_keys is not None
    _keyring(receipt_keys, receipt_source)  # refused here, not when a receipt is signed
    if set(master.keys.values()) & set(index.keys.values()):
        # the keyrings are independent so that either can leak, or be rotated, without the other
        raise SettingsError(
            "PREFS_INDEX_KEY must not repeat a key of PREFS_MASTER_KEYS: give each its own keys"
        )

    k_anonymity = _int(environ, "PREFS_K_ANONYMITY", 10, minimum=2)
    pool_min = _int(environ, "PREFS_POOL_MIN_SIZE", 2, minimum=1)
    return Settings(
        env=env,  # type: ignore[arg-type]
        data_dir=data_dir,
        database_url=database_url,
        master_keys=master_keys,
        index_keys=index_keys,
        jwt_issuer=jwt_issuer,
        jwt_audience=jwt_audience,
        jwt_jwks=jwt_jwks,
        dev_issuer=env == "development",
        **oidc,
        receipt_keys=receipt_keys,
        controller=environ.get("PREFS_CONTROLLER", "prefs"),
        # placeholders (a reserved domain, a fictional number): set them where real customers are
        controller_contact=_text(environ, "PREFS_CONTROLLER_CONTACT", "The prefs privacy team"),
        controller_email=_text(environ, "PREFS_CONTROLLER_EMAIL", "privacy@prefs.example"),
        controller_phone=_text(environ, "PREFS_CONTROLLER_PHONE", "+44 20 7946 0000"),
        controller_address=_text(
            environ, "PREFS_CONTROLLER_ADDRESS", "1 Example Street, London, United Kingdom"
        ),
        controller_url=_text(environ, "PREFS_CONTROLLER_URL", "") or None,
        jurisdiction=_text(environ, "PREFS_JURISDICTION", "GB"),
        # a placeholder on this machine: the code names no address elsewhere (test_no_outbound)
        policy_url=_text(environ, "PREFS_POLICY_URL", "http://localhost/privacy-policy-not-set"),
        k_anonymity=k_anonymity,
        insights_epsilon=_positive_float(environ, "PREFS_INSIGHTS_EPSILON", 1.0),
        insights_reads_per_day=_int(environ, "PREFS_INSIGHTS_READS_PER_DAY", 100, minimum=1),
        customer_requests_per_minute=_int(
            environ, "PREFS_CUSTOMER_REQUESTS_PER_MINUTE", 600, minimum=10
        ),
        checkout_code_ttl_seconds=_int(environ, "PREFS_CHECKOUT_CODE_TTL", 300, minimum=30),
        idempotency_ttl_seconds=_int(environ, "PREFS_IDEMPOTENCY_TTL", 86_400, minimum=60),
        access_log_retention_days=_int(environ, "PREFS_ACCESS_LOG_RETENTION_DAYS", 400, minimum=1),
        pool_min_size=pool_min,
        # the periodic recount of demand holds two at once (prefs.retention.recount_moved)
        pool_max_size=_int(environ, "PREFS_POOL_MAX_SIZE", 16, minimum=max(pool_min, 2)),
        database_pooler=database_pooler(environ),
        database_layout=database_layout(environ),
        max_body_bytes=_int(environ, "PREFS_MAX_BODY_BYTES", 65_536, minimum=1024),
        purge_interval_seconds=_int(environ, "PREFS_PURGE_INTERVAL", 300, minimum=5),
        expiry_interval_seconds=_int(environ, "PREFS_EXPIRY_INTERVAL", 60, minimum=1),
        lookup_misses_per_minute_per_key=_int(
            environ, "PREFS_LOOKUP_MISSES_PER_KEY", 30, minimum=1
        ),
        lookup_misses_per_minute_per_store=_int(
            environ, "PREFS_LOOKUP_MISSES_PER_STORE", 120, minimum=1
        ),
        lookup_batch_max=_int(environ, "PREFS_LOOKUP_BATCH_MAX", 64, minimum=1),
        lookup_batches_in_flight=_int(environ, "PREFS_LOOKUP_BATCHES_IN_FLIGHT", 1, minimum=1),
        partner_accepted_window_days=_int(
            environ, "PREFS_PARTNER_ACCEPTED_WINDOW_DAYS", 30, minimum=1
        ),
        partner_open_proposals=_int(environ, "PREFS_PARTNER_OPEN_PROPOSALS", 3, minimum=1),
        store_waiting_reorders=_int(environ, "PREFS_STORE_WAITING_REORDERS", 20, minimum=1),
        partner_proposal_max_quantity=_int(
            environ, "PREFS_PARTNER_PROPOSAL_MAX_QUANTITY", 5, minimum=1
        ),
        log=log_settings(environ),
    )
