"""Bearer-token rules beyond the signature: a bounded lifetime, the `typ` header RFC 8725
recommends checking, and a key set fetched from the identity provider without following
redirects (and without holding up the event loop while it is fetched)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.exceptions import NotAuthorizedException

from prefs.auth import DEV_KID, MAX_TOKEN_LIFETIME_SECONDS, TokenVerifier
from prefs.crypto import BlindIndex, Keyring
from prefs.settings import load
from tests.support.customer import bearer
from tests.test_auth import assert_refused, b64url, claims, dev_key, dev_token

__all__ = ["dev_key"]  # the module-scoped fixture, shared with test_auth

# --- lifetime --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exp_ahead", [MAX_TOKEN_LIFETIME_SECONDS + 120, 7 * 86_400, 10 * 365 * 86_400, 2**40]
)
async def test_a_token_that_lives_longer_than_a_day_is_refused(client, dev_key, exp_ahead):
    token = dev_token(dev_key, exp=int(time.time()) + exp_ahead)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


async def test_a_token_that_lives_almost_a_day_gets_in(client, dev_key):
    token = dev_token(dev_key, exp=int(time.time()) + MAX_TOKEN_LIFETIME_SECONDS - 60)
    assert (await client.get("/v1/me", headers=bearer(token))).status_code in (200, 404)


async def test_a_token_without_expiry_is_still_refused(client, dev_key):
    token = dev_token(dev_key, exp=None)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


# --- typ -------------------------------------------------------------------------------------


def typed_token(dev_key: Ed25519PrivateKey, typ: str | None) -> str:
    """A dev-issuer token whose header has exactly this ``typ`` (none at all for None)."""
    header: dict[str, Any] = {"alg": "EdDSA", "kid": DEV_KID}
    if typ is not None:
        header["typ"] = typ
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims()).encode())}"
    token = f"{signing_input}.{b64url(dev_key.sign(signing_input.encode()))}"
    assert jwt.get_unverified_header(token).get("typ") == typ
    return token


@pytest.mark.parametrize(
    "typ", ["JWT", "jwt", "at+jwt", "AT+JWT", "application/at+jwt", "application/jwt", None]
)
async def test_a_token_typed_as_a_jwt_or_an_access_token_gets_in(client, dev_key, typ):
    response = await client.get("/v1/me", headers=bearer(typed_token(dev_key, typ)))
    assert response.status_code == 404, response.text  # signed in, not enrolled


@pytest.mark.parametrize(
    "typ", ["dpop+jwt", "secevent+jwt", "logout+jwt", "JOSE", "JOSE+JSON", "", "at+jwt "]
)
async def test_a_token_of_another_type_is_refused(client, dev_key, typ):
    token = typed_token(dev_key, typ)
    assert_refused(await client.get("/v1/me", headers=bearer(token)), token)


# --- the key set is fetched without following redirects ---------------------------------------

ISSUER, AUDIENCE, KID = "https://id.example-retailer.test/", "prefs-api", "idp-1"


class _Site:
    """A tiny HTTP server on 127.0.0.1 answering every GET with ``answer(path)``."""

    def __init__(self, answer: Any) -> None:
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.requests.append(self.path)
                status, headers, body = answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[Ed25519PrivateKey, _Site, _Site]]:
    """The provider's key, the site serving its key set, and a site redirecting to it (slowly)."""
    key = Ed25519PrivateKey.generate()
    public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    key_set = json.dumps({"keys": [{**public, "kid": KID, "alg": "EdDSA", "use": "sig"}]}).encode()
    keys = _Site(lambda path: (200, {"Content-Type": "application/json"}, key_set))

    def redirect(path: str) -> tuple[int, dict[str, str], bytes]:
        time.sleep(0.5)  # long enough to see whether the event loop keeps running meanwhile
        return 302, {"Location": f"{keys.url}/jwks.json"}, b""

    redirecting = _Site(redirect)
    yield key, keys, redirecting
    redirecting.close()
    keys.close()


def verifier_for(jwks_url: str, tmp_path: Path) -> TokenVerifier:
    settings = load(
        {
            "PREFS_ENV": "development",
            "PREFS_DATA_DIR": str(tmp_path),
            "PREFS_JWT_ISSUER": ISSUER,
            "PREFS_JWT_AUDIENCE": AUDIENCE,
            "PREFS_JWT_JWKS": jwks_url,
        }
    )
    return TokenVerifier(settings, BlindIndex(Keyring.parse("1:" + "A" * 43, "PREFS_INDEX_KEY")))


def provider_token(key: Ed25519PrivateKey) -> str:
    return jwt.encode(
        claims(iss=ISSUER, aud=AUDIENCE, sub=f"idp-{uuid.uuid4()}"),
        key,
        algorithm="EdDSA",
        headers={"kid": KID},
    )


async def test_the_key_set_is_fetched_from_its_url(idp, tmp_path):
    key, keys, _ = idp
    customer = await verifier_for(f"{keys.url}/jwks.json", tmp_path).verify(provider_token(key))
    assert customer.subject_hashes


async def test_a_redirecting_key_set_url_is_not_followed_and_the_token_is_refused(idp, tmp_path):
    key, keys, redirecting = idp
    verifier = verifier_for(f"{redirecting.url}/jwks.json", tmp_path)
    fetched_before = len(keys.requests)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        with pytest.raises(NotAuthorizedException):
            await verifier.verify(provider_token(key))
    finally:
        ticker.cancel()
    assert redirecting.requests, "the redirecting URL was asked"
    assert len(keys.requests) == fetched_before, "the redirect was followed"
    assert ticks >= 20, f"the event loop stood still while the key set was fetched ({ticks})"
