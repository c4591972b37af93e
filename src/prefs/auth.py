"""Principals and guards: customers by bearer JWT, tills, partners and insights by API key."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from prefs import credentials
from prefs.credentials import Credential, Kind
from prefs.crypto import BlindIndex
from prefs.settings import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    TOKEN_ALGORITHMS,
    Settings,
    SettingsError,
    create_once,
)

ALGORITHMS = TOKEN_ALGORITHMS
DEV_KID = "prefs-dev-1"
LEEWAY_SECONDS = 30
MAX_TOKEN_LIFETIME_SECONDS = 86_400  # a token may not expire more than a day ahead


@dataclass(frozen=True, slots=True)
class Customer:
    """A signed-in customer, known to the service only by keyed hashes of (issuer, subject)."""

    subject_hashes: Mapping[int, bytes]  # index-key version → hash, primary first


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as presented; verified against the credentials table by the service."""

    kind: Kind
    secret: str


def _new_key() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class DevIssuer:
    """The embedded development token issuer: an Ed25519 key kept under the data dir."""

    def __init__(self, key_path: Path) -> None:
        try:
            key = serialization.load_pem_private_key(create_once(key_path, _new_key), password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, Ed25519PrivateKey):
            raise SettingsError(
                f"{key_path} is not an unencrypted Ed25519 private key in PEM (the development "
                "token issuer's key): restore it, or remove it to make a new one, which ends "
                "the tokens the old one signed"
            )
        self._key = key
        public = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
        self.public_jwk: dict[str, Any] = {**public, "kid": DEV_KID, "alg": "EdDSA", "use": "sig"}

    def mint(self, subject: str, ttl_seconds: int = 3600) -> str:
        now = int(time.time())
        claims = {
            "iss": DEV_ISSUER,
            "aud": DEV_AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": DEV_KID})


class _Issuer:
    def __init__(self, name: str, audience: str, keys: jwt.PyJWKSet | jwt.PyJWKClient) -> None:
        self.name = name
        self.audience = audience
        self.keys = keys

    async def key_for(self, kid: str | None) -> jwt.PyJWK | None:
        if isinstance(self.keys, jwt.PyJWKClient):
            if kid is None:
                return None
            try:
                return await asyncio.to_thread(self.keys.get_signing_key, kid)
            except jwt.PyJWKClientError:
                return None
        candidates = [
            k
            for k in self.keys.keys
            if k.key_id == kid or (kid is None and len(self.keys.keys) == 1)
        ]
        return candidates[0] if candidates else None


def _load_jwks(source: str) -> jwt.PyJWKSet | jwt.PyJWKClient:
    if source.startswith(("https://", "http://")):
        return jwt.PyJWKClient(source, cache_jwk_set=True, lifespan=300, timeout=5)
    return jwt.PyJWKSet.from_json(Path(source).read_text())


class TokenVerifier:
    """Verifies customer bearer tokens from the configured issuer and, in development, the dev issuer."""

    def __init__(self, settings: Settings, index: BlindIndex) -> None:
        self.index = index
        self.issuers: dict[str, _Issuer] = {}
        self.dev_issuer: DevIssuer | None = None
        if settings.jwt_issuer and settings.jwt_jwks and settings.jwt_audience:
            self.issuers[settings.jwt_issuer] = _Issuer(
                settings.jwt_issuer, settings.jwt_audience, _load_jwks(settings.jwt_jwks)
            )
        if settings.dev_issuer:
            self.dev_issuer = DevIssuer(settings.dev_issuer_key_path)
            self.issuers[DEV_ISSUER] = _Issuer(
                DEV_ISSUER, DEV_AUDIENCE, jwt.PyJWKSet([self.dev_issuer.public_jwk])
            )

    async def verify(self, token: str) -> Customer:
        """The customer a token speaks for, or NotAuthorizedException with a generic reason."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthorizedException("The bearer token is malformed.") from None
        if not _typed_as_an_access_token(header):
            raise NotAuthorizedException("The bearer token is not an access token.")
        alg = header.get("alg")
        issuer = self.issuers.get(str(unverified.get("iss")))
        if alg not in ALGORITHMS or issuer is None:
            raise NotAuthorizedException("The bearer token is not from an accepted issuer.")
        key = await issuer.key_for(header.get("kid"))
        if key is None or key.algorithm_name != alg:
            raise NotAuthorizedException("The bearer token is signed with an unknown key.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.name,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthorizedException("The bearer token has expired.") from None
        except jwt.PyJWTError:
            raise NotAuthorizedException("The bearer token is not valid.") from None
        if claims["exp"] > time.time() + MAX_TOKEN_LIFETIME_SECONDS + LEEWAY_SECONDS:
            raise NotAuthorizedException("The bearer token lives longer than a day.")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise NotAuthorizedException("The bearer token has no subject.")
        return Customer(subject_hashes=self.index.subjects(issuer.name, subject))


ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})  # RFC 7519 and RFC 9068 access tokens


def _typed_as_an_access_token(header: dict[str, Any]) -> bool:
    """RFC 8725 (3.11): a `typ` other than a plain JWT or an access token (a DPoP proof, a
    security event, a logout token) is another kind of JWT and never a bearer token; media types
    compare case-insensitively and may omit "application/"."""
    if "typ" not in header:
        return True
    typ = header["typ"]
    return isinstance(typ, str) and typ.lower().removeprefix("application/") in ACCESS_TOKEN_TYPES


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise NotAuthorizedException("A bearer token is required.")
    return credentials.strip()


async def customer_guard(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Admit requests that carry a valid customer token; remember who it speaks for."""
    token = _bearer(connection)
    if token.startswith(("pos_", "ptn_", "ins_")):
        raise NotAuthorizedException("This endpoint needs a customer token, not an API key.")
    verifier: TokenVerifier = connection.app.state.verifier
    connection.state.signed_in_customer = await verifier.verify(token)


API_KEY_PREFIX: dict[Kind, str] = {"pos": "pos_", "partner": "ptn_", "insights": "ins_"}


def api_key_guard(kind: Kind, *, verify: bool = True) -> Any:
    """A guard admitting requests that carry a live API key of ``kind``, before any body is read.

    The key is verified against the credentials table on every request (no cache), so a revoked
    key fails at once. ``verify=False`` is for the till, whose lookup statement checks the key
    itself (no round trip of its own): the guard then checks the key's shape only, and the till checks the
    key with ``require_live_api_key`` before it refuses a body.
    """
    prefix = API_KEY_PREFIX[kind]

    # async: Litestar runs sync guards in a thread pool, a cost on the till's hot path
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        secret = _bearer(connection)
        if not secret.startswith(prefix) or len(secret) > 128:
            raise NotAuthorizedException(f"This endpoint needs a {prefix} API key.")
        connection.state.api_key = ApiKey(kind=kind, secret=secret)
        if verify:
            connection.state.credential = await require_live_api_key(connection)

    return guard


async def require_live_api_key(connection: ASGIConnection[Any, Any, Any, Any]) -> Credential:
    """The live credential behind the request's API key, or 401 (unknown or revoked)."""
    api_key: ApiKey = connection.state.api_key
    async with connection.app.state.pool.acquire() as conn:
        credential = await credentials.verify(conn, api_key.kind, api_key.secret)
    if credential is None:
        raise NotAuthorizedException("The API key is not valid.")
    return credential


_TILL_KEY = api_key_guard("pos")
_PARTNER_KEY = api_key_guard("partner")


async def customer_till_or_partner_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Admit a customer's token, a live till key or a live partner key (public facts, such as the
    catalogue, for anyone the service knows)."""
    token = _bearer(connection)
    if token.startswith(API_KEY_PREFIX["pos"]):
        await _TILL_KEY(connection, handler)
    elif token.startswith(API_KEY_PREFIX["partner"]):
        await _PARTNER_KEY(connection, handler)
    else:
        await customer_guard(connection, handler)
