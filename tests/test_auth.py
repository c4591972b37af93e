"""Customer authentication on the live server: which bearer tokens get in, which are told no."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from prefs.app import create_app
from prefs.auth import DEV_KID, LEEWAY_SECONDS, DevIssuer
from prefs.settings import DEV_AUDIENCE, DEV_ISSUER, Settings, load
from tests.support.customer import bearer
from tests.support.database import Database
from tests.support.servers import LiveServer

EXTERNAL_ISSUER = "https://id.example-retailer.test/"
EXTERNAL_AUDIENCE = "prefs-api"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": f"auth-{uuid.uuid4()}@example.test",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
def dev_key(settings: Settings) -> Ed25519PrivateKey:
    DevIssuer(settings.dev_issuer_key_path)  # make sure it exists
    key = serialization.load_pem_private_key(
        settings.dev_issuer_key_path.read_bytes(), password=None
    )
    assert isinstance(key, Ed25519PrivateKey)
    return key


def dev_token(dev_key: Ed25519PrivateKey, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), dev_key, algorithm="EdDSA", headers={"kid": DEV_KID})


def assert_refused(response: httpx.Response, token: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    problem = response.json()
    assert problem["status"] == 401
    assert problem["type"].startswith("urn:prefs:problem:")
    if token:
        assert token not in response.text
        assert token.split(".")[-1] not in response.text  # not even the signature


# The dev issuer on the session server


async def test_a_valid_dev_token_gets_in(client, dev_key):
    response = await client.post("/v1/me", headers=bearer(dev_token(dev_key)))
    assert response.status_code == 201, response.text


async def test_no_token_is_refused(client):
    assert_refused(await client.get("/v1/me"))
    assert_refused(await client.get("/v1/me/preferences"))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Token abc",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer eyJhbGciOiJFZERTQSJ9.e30",
        "Bearer ....",
    ],
)
async def test_a_malformed_authorization_is_refused(client, authorization):
    assert_refused(await client.get("/v1/me", headers={"Authorization": authorization}))


async def test_an_unsigned_alg_none_token_is_refused(client):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": DEV_KID}).encode())
    body = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{body}.", f"{header}.{body}"):
        assert_refused(await client.get("/v1/me", headers=bearer(token)))


async def test_an_hs256_token_keyed_with_the_public_key_is_refused(client, dev_key):
    public = dev_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": DEV_KID}).encode())
    body = b64url(json.dumps(claims()).encode())
    signature = b64url(hmac.new(public, f"{header}.{body}".encode(), hashlib.sha256).digest())
    token = f"{header}.{body}.{signature}"
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_with_an_unknown_kid_is_refused(client, dev_key):
    for kid in ("prefs-dev-2", "", "../prefs-dev-1"):
        token = jwt.encode(claims(), dev_key, algorithm="EdDSA", headers={"kid": kid})
        assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_an_expired_token_is_refused(client, dev_key):
    now = int(time.time())
    token = dev_token(dev_key, iat=now - 7200, nbf=now - 7200, exp=now - LEEWAY_SECONDS - 60)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_without_expiry_is_refused(client, dev_key):
    token = dev_token(dev_key, exp=None)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_not_valid_yet_is_refused(client, dev_key):
    now = int(time.time())
    token = dev_token(dev_key, nbf=now + LEEWAY_SECONDS + 300, exp=now + 3600)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_for_another_audience_is_refused(client, dev_key):
    for audience in ("another-service", ["another-service"], None):
        token = dev_token(dev_key, aud=audience)
        assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_from_another_issuer_is_refused(client, dev_key):
    for issuer in ("https://evil.example.test/", "prefs-dev ", None):
        token = dev_token(dev_key, iss=issuer)
        assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_without_a_subject_is_refused(client, dev_key):
    for subject in (None, ""):
        token = dev_token(dev_key, sub=subject)
        assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_signed_by_another_ed25519_key_with_the_dev_kid_is_refused(client):
    impostor = Ed25519PrivateKey.generate()
    for headers in ({"kid": DEV_KID}, {}):
        token = jwt.encode(claims(), impostor, algorithm="EdDSA", headers=headers)
        assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_whose_claims_were_changed_after_signing_is_refused(client, dev_key):
    token = dev_token(dev_key)
    header, _, signature = token.split(".")
    forged = f"{header}.{b64url(json.dumps(claims(sub='someone-else')).encode())}.{signature}"
    assert_refused(await client.get("/v1/me", headers=bearer(forged)), forged)


@pytest.mark.parametrize("prefix", ["pos_", "ptn_", "ins_"])
async def test_an_api_key_on_a_customer_endpoint_is_refused(client, prefix):
    key = prefix + b64url(uuid.uuid4().bytes * 2)
    assert_refused(await client.get("/v1/me", headers=bearer(key)), key)
    assert_refused(await client.get("/v1/me/preferences", headers=bearer(key)), key)


# An external identity provider


@pytest.fixture(scope="module")
def provider_keys() -> dict[str, Any]:
    return {
        "ec-1": (ec.generate_private_key(ec.SECP256R1()), "ES256"),
        "rsa-1": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        "ed-1": (Ed25519PrivateKey.generate(), "EdDSA"),
    }


def public_jwk(key: Any, alg: str, kid: str) -> dict[str, Any]:
    algorithm = {
        "ES256": jwt.algorithms.ECAlgorithm,
        "RS256": jwt.algorithms.RSAAlgorithm,
        "EdDSA": jwt.algorithms.OKPAlgorithm,
    }[alg]
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


def external_token(key: Any, alg: str, kid: str, **overrides: Any) -> str:
    return jwt.encode(
        claims(**{"iss": EXTERNAL_ISSUER, "aud": EXTERNAL_AUDIENCE, **overrides}),
        key,
        algorithm=alg,
        headers={"kid": kid},
    )


def external_settings(database: Database, data_dir: Path, jwks: Path, env: str) -> Settings:
    environ = {
        "PREFS_ENV": env,
        "PREFS_DATA_DIR": str(data_dir),
        **database.app_env,
        "PREFS_JWT_ISSUER": EXTERNAL_ISSUER,
        "PREFS_JWT_AUDIENCE": EXTERNAL_AUDIENCE,
        "PREFS_JWT_JWKS": str(jwks),
    }
    if env == "production":
        environ["PREFS_OIDC_CLIENT_ID"] = "prefs-page"
        environ["PREFS_MASTER_KEYS"] = "1:" + b64url(b"m" * 32)
        environ["PREFS_INDEX_KEY"] = "1:" + b64url(b"i" * 32)
        environ["PREFS_RECEIPT_KEYS"] = "1:" + b64url(b"r" * 32)
    return load(environ)


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory, provider_keys) -> Path:
    path = tmp_path_factory.mktemp("idp") / "jwks.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(k, alg, kid) for kid, (k, alg) in provider_keys.items()]})
    )
    return path


@dataclass
class ExternalApp:
    server: LiveServer
    settings: Settings


@pytest.fixture(scope="module", params=["development", "production"])
def external(request, database, jwks_file, tmp_path_factory) -> Iterator[ExternalApp]:
    """A second app that trusts the external issuer (in development, alongside the dev issuer)."""
    settings = external_settings(
        database, tmp_path_factory.mktemp("external"), jwks_file, request.param
    )
    with LiveServer(create_app(settings)) as live:
        yield ExternalApp(live, settings)


@pytest.fixture
async def external_client(external: ExternalApp) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=external.server.url, timeout=30) as http:
        yield http


@pytest.mark.parametrize("kid", ["ec-1", "rsa-1", "ed-1"])
async def test_tokens_from_the_configured_issuer_are_accepted(external_client, provider_keys, kid):
    key, alg = provider_keys[kid]
    token = external_token(key, alg, kid)
    enrolled = await external_client.post("/v1/me", headers=bearer(token))
    assert enrolled.status_code == 201, enrolled.text
    again = await external_client.get("/v1/me", headers=bearer(token))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == enrolled.json()["id"]


async def test_a_key_set_answers_only_for_its_own_issuer(external_client, provider_keys):
    key, alg = provider_keys["ed-1"]
    as_dev = jwt.encode(claims(), key, algorithm=alg, headers={"kid": "ed-1"})
    assert_refused(await external_client.get("/v1/me", headers=bearer(as_dev)), as_dev)
    wrong_audience = external_token(key, alg, "ed-1", aud=DEV_AUDIENCE)
    assert_refused(
        await external_client.get("/v1/me", headers=bearer(wrong_audience)), wrong_audience
    )


async def test_a_token_naming_another_key_of_the_issuer_is_refused(external_client, provider_keys):
    ec_key, _ = provider_keys["ec-1"]
    rsa_key, _ = provider_keys["rsa-1"]
    for token in (
        external_token(ec_key, "ES256", "rsa-1"),  # kid of the RSA key, ES256 signature
        external_token(rsa_key, "RS256", "ec-1"),
        external_token(ec_key, "ES256", "ec-2"),  # a kid the issuer never published
        external_token(ec.generate_private_key(ec.SECP256R1()), "ES256", "ec-1"),  # impostor key
    ):
        assert_refused(await external_client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_with_an_algorithm_outside_the_allowed_set_is_refused(
    external_client, provider_keys
):
    rsa_key, _ = provider_keys["rsa-1"]
    for token in (
        external_token(rsa_key, "RS384", "rsa-1"),
        external_token(rsa_key, "PS256", "rsa-1"),
        external_token(ec.generate_private_key(ec.SECP384R1()), "ES384", "ec-1"),
        external_token(b"a-shared-secret-that-is-long-enough", "HS256", "ec-1"),
    ):
        assert_refused(await external_client.get("/v1/me", headers=bearer(token)), token)


async def test_an_expired_token_from_the_configured_issuer_is_refused(
    external_client, provider_keys
):
    key, alg = provider_keys["rsa-1"]
    now = int(time.time())
    token = external_token(key, alg, "rsa-1", iat=now - 7200, nbf=now - 7200, exp=now - 600)
    assert_refused(await external_client.get("/v1/me", headers=bearer(token)), token)


async def test_dev_tokens_are_accepted_in_development_and_refused_in_production(
    external, external_client, dev_key
):
    # The external app has its own data dir, so in development its own dev issuer key.
    own = DevIssuer(external.settings.dev_issuer_key_path).mint(f"dev-{uuid.uuid4()}")
    foreign = dev_token(dev_key)  # the session server's dev issuer: another key under the same kid
    assert_refused(await external_client.get("/v1/me", headers=bearer(foreign)), foreign)
    response = await external_client.post("/v1/me", headers=bearer(own))
    if external.settings.env == "development":
        assert response.status_code == 201, response.text
    else:
        assert_refused(response, own)
