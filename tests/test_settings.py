"""Settings from the environment: production refuses to guess, development makes its own keys."""

from __future__ import annotations

import base64
import json
import multiprocessing
import stat
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prefs.auth import DevIssuer, TokenVerifier
from prefs.crypto import Vault
from prefs.settings import SettingsError, database_settings, load, log_settings

REQUIRED_IN_PRODUCTION = (
    "PREFS_DATABASE_URL",
    "PREFS_MASTER_KEYS",
    "PREFS_INDEX_KEY",
    "PREFS_JWT_ISSUER",
    "PREFS_JWT_AUDIENCE",
    "PREFS_JWT_JWKS",
    "PREFS_OIDC_CLIENT_ID",
    "PREFS_RECEIPT_KEYS",
)


def key_setting(fill: bytes) -> str:
    return "1:" + base64.urlsafe_b64encode(fill * 32).decode()


@pytest.fixture
def production(tmp_path: Path) -> dict[str, str]:
    jwks = tmp_path / "jwks.json"
    public = Ed25519PrivateKey.generate().public_key()
    jwk = {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public)), "kid": "idp-1", "alg": "EdDSA"}
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return {
        "PREFS_ENV": "production",
        "PREFS_DATA_DIR": str(tmp_path / "data"),
        "PREFS_DATABASE_URL": "postgresql://prefs@db.internal:5432/prefs",
        "PREFS_MASTER_KEYS": key_setting(b"m"),
        "PREFS_INDEX_KEY": key_setting(b"i"),
        "PREFS_JWT_ISSUER": "https://id.example-retailer.test/",
        "PREFS_JWT_AUDIENCE": "prefs-api",
        "PREFS_JWT_JWKS": str(jwks),
        "PREFS_OIDC_CLIENT_ID": "prefs-page",
        "PREFS_RECEIPT_KEYS": key_setting(b"r"),
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_production_starts_with_everything_configured_and_no_dev_issuer(production):
    settings = load(production)
    assert settings.env == "production"
    assert settings.dev_issuer is False
    assert settings.master_keys == production["PREFS_MASTER_KEYS"]
    assert not Path(production["PREFS_DATA_DIR"]).exists()  # no development keys were made


@pytest.mark.parametrize("missing", REQUIRED_IN_PRODUCTION)
def test_production_refuses_without_each_required_setting_and_names_it(production, missing):
    for absent in (
        {k: v for k, v in production.items() if k != missing},
        {**production, missing: ""},
    ):
        with pytest.raises(SettingsError) as raised:
            load(absent)
        message = str(raised.value)
        assert missing in message
        assert "\n" not in message
        for name in REQUIRED_IN_PRODUCTION:
            if name != missing:
                assert name not in message.split("(")[0], f"{name} is set but reported missing"
    assert not Path(production["PREFS_DATA_DIR"]).exists()


def test_production_with_nothing_set_names_everything_missing_on_one_line(tmp_path):
    with pytest.raises(SettingsError) as raised:
        load({"PREFS_ENV": "production", "PREFS_DATA_DIR": str(tmp_path / "data")})
    message = str(raised.value)
    assert "\n" not in message
    for name in REQUIRED_IN_PRODUCTION:
        assert name in message


def test_production_never_enables_the_dev_issuer(production):
    settings = load(production)
    verifier = TokenVerifier(
        settings, Vault.from_settings(settings.master_keys, settings.index_keys).index
    )
    assert verifier.dev_issuer is None
    assert list(verifier.issuers) == ["https://id.example-retailer.test/"]
    assert not settings.dev_issuer_key_path.exists()


def test_production_settings_never_echo_key_material(production):
    keyrings = ("PREFS_MASTER_KEYS", "PREFS_INDEX_KEY", "PREFS_RECEIPT_KEYS")
    for name in keyrings:
        with pytest.raises(SettingsError) as raised:
            load({k: v for k, v in production.items() if k != name})
        for secret in (production[keyring] for keyring in keyrings):
            assert secret[2:] not in str(raised.value)


@pytest.mark.parametrize(
    "jwks",
    [
        "http://id.example-retailer.test/.well-known/jwks.json",
        "HTTP://id.example-retailer.test/jwks.json",
        "ftp://id.example-retailer.test/jwks.json",
    ],
)
def test_production_refuses_a_key_set_fetched_without_tls_and_names_the_setting(production, jwks):
    with pytest.raises(SettingsError) as raised:
        load({**production, "PREFS_JWT_JWKS": jwks})
    message = str(raised.value)
    assert "PREFS_JWT_JWKS" in message
    assert "https://" in message
    assert "\n" not in message
    assert jwks not in message


def test_production_accepts_a_key_set_url_over_https(production):
    url = "https://id.example-retailer.test/.well-known/jwks.json"
    assert load({**production, "PREFS_JWT_JWKS": url}).jwt_jwks == url


def test_development_may_fetch_its_key_set_over_plain_http_from_a_local_issuer(tmp_path):
    url = "http://127.0.0.1:8080/.well-known/jwks.json"
    settings = load(
        {
            "PREFS_DATA_DIR": str(tmp_path),
            "PREFS_JWT_ISSUER": "http://127.0.0.1:8080/",
            "PREFS_JWT_AUDIENCE": "prefs-api",
            "PREFS_JWT_JWKS": url,
        }
    )
    assert settings.env == "development"
    assert settings.jwt_jwks == url


def test_an_unknown_environment_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="PREFS_ENV"):
        load({"PREFS_ENV": "staging", "PREFS_DATA_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    "partial",
    [
        {"PREFS_JWT_ISSUER": "https://id.example.test/"},
        {"PREFS_JWT_JWKS": "/nonexistent/jwks.json"},
        {
            "PREFS_JWT_ISSUER": "https://id.example.test/",
            "PREFS_JWT_JWKS": "/nonexistent/jwks.json",
        },
    ],
)
def test_identity_provider_settings_must_come_together(tmp_path, partial):
    with pytest.raises(
        SettingsError, match="PREFS_JWT_ISSUER, PREFS_JWT_AUDIENCE and PREFS_JWT_JWKS"
    ):
        load({"PREFS_DATA_DIR": str(tmp_path), **partial})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PREFS_K_ANONYMITY", "ten"),
        ("PREFS_K_ANONYMITY", "1"),
        ("PREFS_POOL_MAX_SIZE", "0"),
        ("PREFS_MAX_BODY_BYTES", "12"),
    ],
)
def test_a_bad_number_is_refused_naming_the_setting(tmp_path, name, value):
    with pytest.raises(SettingsError) as raised:
        load({"PREFS_DATA_DIR": str(tmp_path), name: value})
    assert name in str(raised.value)


def test_the_database_pooler_is_none_unless_set_and_an_unknown_one_is_refused(tmp_path):
    assert load({"PREFS_DATA_DIR": str(tmp_path)}).database_pooler == "none"
    pooled = load({"PREFS_DATA_DIR": str(tmp_path), "PREFS_DATABASE_POOLER": "transaction"})
    assert pooled.database_pooler == "transaction"
    with pytest.raises(SettingsError) as raised:
        load({"PREFS_DATA_DIR": str(tmp_path), "PREFS_DATABASE_POOLER": "session"})
    assert str(raised.value) == "PREFS_DATABASE_POOLER must be one of none, transaction"


def test_the_database_layout_is_single_unless_set_and_an_unknown_one_is_refused(tmp_path):
    assert load({"PREFS_DATA_DIR": str(tmp_path)}).database_layout == "single"
    cluster = load({"PREFS_DATA_DIR": str(tmp_path), "PREFS_DATABASE_LAYOUT": "distributed"})
    assert cluster.database_layout == "distributed"
    with pytest.raises(SettingsError) as raised:
        load({"PREFS_DATA_DIR": str(tmp_path), "PREFS_DATABASE_LAYOUT": "citus"})
    assert str(raised.value) == "PREFS_DATABASE_LAYOUT must be one of single, distributed"


def test_development_creates_owner_only_keys_and_reuses_them(tmp_path):
    data_dir = tmp_path / "fresh" / ".prefs"
    first = load({"PREFS_DATA_DIR": str(data_dir)})
    assert first.env == "development"
    assert first.dev_issuer is True
    assert first.data_dir == data_dir.resolve()
    assert mode(data_dir) == 0o700
    for name in ("master.keys", "index.key", "receipt.keys"):
        assert mode(data_dir / name) == 0o600, name
    assert len({first.master_keys, first.index_keys, first.receipt_keys}) == 3
    Vault.from_settings(first.master_keys, first.index_keys)  # both parse

    issuer = DevIssuer(first.dev_issuer_key_path)
    assert first.dev_issuer_key_path.parent == data_dir.resolve()
    assert mode(first.dev_issuer_key_path) == 0o600

    second = load({"PREFS_DATA_DIR": str(data_dir)})
    assert (second.master_keys, second.index_keys, second.receipt_keys) == (
        first.master_keys,
        first.index_keys,
        first.receipt_keys,
    )
    assert DevIssuer(second.dev_issuer_key_path).public_jwk == issuer.public_jwk
    assert sorted(p.name for p in data_dir.iterdir()) == [
        "dev-issuer.pem",
        "index.key",
        "master.keys",
        "receipt.keys",
    ]


def _start_on(data_dir: str, barrier: Any, results: Any) -> None:
    """One process starting on ``data_dir``: what it reads of its keys and its token issuer's
    key, or the error it met."""
    barrier.wait()
    try:
        settings = load({"PREFS_DATA_DIR": data_dir})
        issuer = DevIssuer(settings.dev_issuer_key_path)
    except Exception as error:
        results.put(repr(error))
    else:
        keys = (settings.master_keys, settings.index_keys, settings.receipt_keys)
        results.put(repr((*keys, issuer.public_jwk["x"])))


def test_processes_starting_together_on_a_new_data_dir_all_read_the_same_whole_keys(tmp_path):
    """`prefs serve --workers 2` on a fresh data dir: each worker creates the keys it does not
    find. None may read a key file another is still writing, or fail because another created it
    first, and all must end up with the same keys."""
    processes = 6
    context = multiprocessing.get_context("fork")
    for attempt in range(15):
        data_dir = str(tmp_path / str(attempt) / ".prefs")
        barrier, results = context.Barrier(processes), context.SimpleQueue()
        started = [
            context.Process(target=_start_on, args=(data_dir, barrier, results))
            for _ in range(processes)
        ]
        for process in started:
            process.start()
        read = [results.get() for _ in started]
        for process in started:
            process.join()
        assert len(set(read)) == 1, f"attempt {attempt}: {sorted(set(read))}"
        assert "Error" not in read[0], read[0]
        files = sorted(p.name for p in Path(data_dir).iterdir())
        assert files == ["dev-issuer.pem", "index.key", "master.keys", "receipt.keys"]


def test_later_starts_leave_the_data_dirs_permissions_as_the_embedded_database_set_them(tmp_path):
    """Run as root, the embedded PostgreSQL runs as its own user and opens the data dir for it
    to traverse on its first start. A later start that made the dir owner-only again would lock
    the database out of its own files (pg_ctl: Permission denied)."""
    data_dir = tmp_path / ".prefs"
    load({"PREFS_DATA_DIR": str(data_dir)})
    assert mode(data_dir) == 0o700
    data_dir.chmod(0o755)  # what pgserver does for its user
    load({"PREFS_DATA_DIR": str(data_dir)})
    assert mode(data_dir) == 0o755


def test_a_key_file_added_on_a_later_start_leaves_the_data_dirs_permissions_alone(tmp_path):
    """A data dir from a release that kept fewer keys (receipt.keys came later) gets the new
    key file on its next start; the embedded PostgreSQL already opened the dir for its user on
    its first start, and must still find it open."""
    data_dir = tmp_path / ".prefs"
    load({"PREFS_DATA_DIR": str(data_dir)})
    (data_dir / "pg").mkdir()  # the embedded database's first start
    data_dir.chmod(0o755)  # what pgserver does for its user
    (data_dir / "receipt.keys").unlink()  # not kept by the release that made the dir
    load({"PREFS_DATA_DIR": str(data_dir)})
    assert (data_dir / "receipt.keys").exists()
    assert mode(data_dir) == 0o755


def test_development_keys_differ_between_data_directories(tmp_path):
    one = load({"PREFS_DATA_DIR": str(tmp_path / "one")})
    two = load({"PREFS_DATA_DIR": str(tmp_path / "two")})
    assert one.master_keys != two.master_keys
    assert one.index_keys != two.index_keys
    assert one.receipt_keys != two.receipt_keys


def test_keys_given_in_development_are_used_and_no_key_file_is_written(tmp_path):
    settings = load(
        {
            "PREFS_DATA_DIR": str(tmp_path / "data"),
            "PREFS_MASTER_KEYS": key_setting(b"m"),
            "PREFS_INDEX_KEY": key_setting(b"i"),
            "PREFS_RECEIPT_KEYS": key_setting(b"r"),
        }
    )
    assert settings.master_keys == key_setting(b"m")
    assert settings.index_keys == key_setting(b"i")
    assert settings.receipt_keys == key_setting(b"r")
    for name in ("master.keys", "index.key", "receipt.keys"):
        assert not (tmp_path / "data" / name).exists()


def test_the_default_data_directory_is_dot_prefs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load({})
    assert settings.data_dir == (tmp_path / ".prefs").resolve()
    assert (tmp_path / ".prefs" / "master.keys").exists()


def test_production_signs_the_page_in_with_the_identity_provider_over_tls(production):
    settings = load(production)
    assert settings.oidc_issuer == production["PREFS_JWT_ISSUER"]  # the API's issuer by default
    assert (settings.oidc_client_id, settings.oidc_scopes, settings.oidc_redirect_path) == (
        "prefs-page",
        "openid",
        "/",
    )
    own = load({**production, "PREFS_OIDC_ISSUER": "https://login.example-retailer.test"})
    assert own.oidc_issuer == "https://login.example-retailer.test"
    for name, value, said in (
        ("PREFS_OIDC_ISSUER", "http://login.example-retailer.test", "https://"),
        ("PREFS_OIDC_ISSUER", "http://127.0.0.1:4455", "https://"),
        ("PREFS_OIDC_SCOPES", "profile email", "openid"),
        ("PREFS_OIDC_REDIRECT_PATH", "https://elsewhere.test/", "a path"),
        ("PREFS_OIDC_REDIRECT_PATH", "//elsewhere.test/", "a path"),
    ):
        with pytest.raises(SettingsError) as raised:
            load({**production, name: value})
        assert name in str(raised.value) and said in str(raised.value)


def test_development_may_sign_in_with_a_provider_on_this_machine(tmp_path):
    base = {"PREFS_DATA_DIR": str(tmp_path), "PREFS_OIDC_CLIENT_ID": "prefs-page"}
    with pytest.raises(SettingsError, match="PREFS_OIDC_ISSUER"):
        load(base)  # a client id, but no provider to find
    local = load({**base, "PREFS_OIDC_ISSUER": "http://127.0.0.1:4455"})
    assert local.oidc_issuer == "http://127.0.0.1:4455"
    assert load({"PREFS_DATA_DIR": str(tmp_path)}).oidc_client_id is None  # the demo sign-in only
    scoped = load(
        {
            **base,
            "PREFS_OIDC_ISSUER": "http://localhost:4455",
            "PREFS_OIDC_SCOPES": " openid  profile ",
        }
    )
    assert scoped.oidc_scopes == "openid profile"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("garbage", "VERSION:BASE64KEY"),
        ("1:abcd", "must be 32 bytes"),
        ("1:" + "!" * 43, "not base64"),
        (key_setting(b"a") + ",1:" + base64.urlsafe_b64encode(b"b" * 32).decode(), "repeated"),
    ],
)
@pytest.mark.parametrize("name", ["PREFS_MASTER_KEYS", "PREFS_INDEX_KEY"])
def test_a_keyring_that_cannot_be_read_is_refused_at_load_naming_it(production, name, value, says):
    with pytest.raises(SettingsError) as raised:
        load({**production, name: value})
    message = str(raised.value)
    assert message.startswith(name) and says in message
    assert "\n" not in message
    assert (value.partition(":")[2] or value)[:8] not in message  # never the key itself


def test_a_damaged_development_key_file_is_named_with_its_path(tmp_path):
    (tmp_path / "master.keys").write_text("1:abcd\n")
    with pytest.raises(SettingsError) as raised:
        load({"PREFS_DATA_DIR": str(tmp_path)})
    assert str(raised.value).startswith(f"{tmp_path / 'master.keys'} (PREFS_MASTER_KEYS is unset)")


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "there is no file"),
        ("not json", "is not JSON"),
        ('[{"kty": "OKP"}]', 'no "keys" list'),
        ('{"keys": []}', "holds no keys"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "no key tokens can be checked with"),
        ('{"keys": [{"kty": "OKP", "crv": "Ed25519"}]}', "no key tokens can be checked with"),
    ],
)
def test_a_key_set_file_that_cannot_check_tokens_is_refused_at_load(production, content, says):
    path = Path(production["PREFS_DATA_DIR"]).parent / "idp-jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as raised:
        load({**production, "PREFS_JWT_JWKS": str(path)})
    message = str(raised.value)
    assert message.startswith("PREFS_JWT_JWKS") and says in message and str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["mysql://prefs:s3cret-pw@db.internal/prefs", "db.internal:5432/prefs", "s3cret-pw"]
)
def test_a_database_url_that_is_not_postgresql_is_refused_without_echoing_it(production, url):
    with pytest.raises(SettingsError) as raised:
        load({**production, "PREFS_DATABASE_URL": url})
    assert str(raised.value) == "PREFS_DATABASE_URL must be a postgresql:// URL"


@pytest.mark.parametrize(
    ("name", "value"),
    [("PREFS_LOG_LEVEL", "loud"), ("PREFS_LOG_FORMAT", "xml"), ("PREFS_REQUEST_LOG", "maybe")],
)
def test_a_bad_log_setting_is_refused_naming_it(tmp_path, name, value):
    with pytest.raises(SettingsError, match=name):
        load({"PREFS_DATA_DIR": str(tmp_path), name: value})


@pytest.mark.parametrize("env", ["production", "development"])
def test_the_same_key_for_both_keyrings_is_refused(production, tmp_path, env):
    version_two = "2:" + key_setting(b"m").partition(":")[2]
    for master, index in (
        (key_setting(b"m"), key_setting(b"m")),
        (key_setting(b"m"), f"{key_setting(b'i')},{version_two}"),  # any key, any version
    ):
        environ = {**production, "PREFS_ENV": env, "PREFS_MASTER_KEYS": master}
        with pytest.raises(SettingsError) as raised:
            load({**environ, "PREFS_INDEX_KEY": index})
        message = str(raised.value)
        assert "PREFS_MASTER_KEYS" in message and "PREFS_INDEX_KEY" in message
        assert key_setting(b"m")[2:] not in message


@pytest.mark.parametrize(
    "setting",
    [
        "1:not base64!",
        "1:" + base64.urlsafe_b64encode(b"short").decode(),
        "one:" + base64.urlsafe_b64encode(b"r" * 32).decode(),
        ",",
    ],
)
def test_a_malformed_receipt_key_is_refused_on_one_line_naming_the_setting(production, setting):
    with pytest.raises(SettingsError) as raised:
        load({**production, "PREFS_RECEIPT_KEYS": setting})
    message = str(raised.value)
    assert message.startswith("PREFS_RECEIPT_KEYS: ")
    assert "\n" not in message
    secret = setting.partition(":")[2]
    assert not secret or secret not in message


def test_receipt_details_come_from_the_environment_with_placeholders_for_development(tmp_path):
    placeholders = load({"PREFS_DATA_DIR": str(tmp_path)})
    assert placeholders.controller_email.endswith(".example")
    assert placeholders.policy_url == "http://localhost/privacy-policy-not-set"
    assert placeholders.controller_url is None
    details = {
        "PREFS_CONTROLLER_CONTACT": "Data Protection Officer",
        "PREFS_CONTROLLER_EMAIL": "dpo@retailer.example",
        "PREFS_CONTROLLER_PHONE": "+44 20 7946 0123",
        "PREFS_CONTROLLER_ADDRESS": "2 Market Square, Leeds LS1 1AA, United Kingdom",
        "PREFS_CONTROLLER_URL": "https://retailer.example/",
        "PREFS_JURISDICTION": "GB",
        "PREFS_POLICY_URL": "https://retailer.example/privacy/2026-01",
    }
    settings = load({"PREFS_DATA_DIR": str(tmp_path), **details})
    assert (
        settings.controller_contact,
        settings.controller_email,
        settings.controller_phone,
        settings.controller_address,
        settings.controller_url,
        settings.jurisdiction,
        settings.policy_url,
    ) == tuple(details.values())


@pytest.mark.parametrize(
    ("environ", "terminal", "json_lines"),
    [
        ({}, True, False),  # development on a terminal: a person reads it
        ({}, False, True),  # development into a file or a pipe: JSON lines
        ({"PREFS_ENV": "production"}, True, True),
        ({"PREFS_LOG_FORMAT": "json"}, True, True),
        ({"PREFS_LOG_FORMAT": "text"}, False, False),
    ],
)
def test_logs_are_text_on_a_development_terminal_and_json_lines_elsewhere(
    environ, terminal, json_lines
):
    assert log_settings(environ, terminal=terminal).json_lines is json_lines


def test_settings_refuse_an_api_audience_that_is_the_pages_client_id(production):
    """The API tells the page's ID token from an access token by audience only (typ "JWT" passes
    _typed_as_an_access_token). With PREFS_JWT_AUDIENCE == PREFS_OIDC_CLIENT_ID -- what many
    providers issue by default -- the ID token (kept in sessionStorage, put in the end-session
    URL as id_token_hint, so in history and the provider's logs) is accepted as a bearer token."""
    with pytest.raises(SettingsError):
        load(
            {**production, "PREFS_JWT_AUDIENCE": "prefs-page", "PREFS_OIDC_CLIENT_ID": "prefs-page"}
        )


@pytest.mark.parametrize("path", ["/\\evil.example/", "/\\/evil.example/", "/\t/evil.example/"])
def test_settings_refuse_a_redirect_path_a_browser_reads_as_another_host(
    production,
    path,
):
    """oidc.js resolves the path with new URL(path, origin): WHATWG URL parsing reads a
    backslash as a slash and drops tabs, so "/\\evil.example/" is https://evil.example/ -- the
    redirect_uri and post_logout_redirect_uri the page sends. The check only refuses "//"."""
    with pytest.raises(SettingsError):
        load({**production, "PREFS_OIDC_REDIRECT_PATH": path})


def test_a_pool_of_one_connection_is_refused(tmp_path):
    """The service's periodic recount of demand holds two connections at once: a pool of one
    would wait for itself."""
    with pytest.raises(SettingsError, match="PREFS_POOL_MAX_SIZE must be at least 2"):
        load(
            {
                "PREFS_DATA_DIR": str(tmp_path),
                "PREFS_POOL_MIN_SIZE": "1",
                "PREFS_POOL_MAX_SIZE": "1",
            }
        )


def test_commands_that_need_only_the_database_read_no_keys(tmp_path):
    """`prefs catalogue import` reads the database settings alone: in production the URL is all
    it needs, and in development it makes no keys in the data dir."""
    production = {"PREFS_ENV": "production", "PREFS_DATA_DIR": str(tmp_path / "job")}
    with pytest.raises(SettingsError, match=r"^production needs PREFS_DATABASE_URL "):
        database_settings(production)
    url = "postgresql://prefs@db.internal:5432/prefs"
    found = database_settings({**production, "PREFS_DATABASE_URL": url})
    assert (found.database_url, found.database_pooler) == (url, "none")
    development = database_settings({"PREFS_DATA_DIR": str(tmp_path / "dev")})
    assert development.database_url is None
    assert list((tmp_path / "dev").iterdir()) == []
    # owner-only before the embedded PostgreSQL first starts there, as when keys are made
    assert stat.S_IMODE((tmp_path / "dev").stat().st_mode) == 0o700
