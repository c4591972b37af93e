"""Key before body: a request without a valid credential is answered 401 whatever its body,
on every route a till, a partner or a customer calls; a valid one still hears what is wrong
with its body."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pytest

from prefs import credentials
from tests.support.customer import bearer
from tests.support.partner import partner_key
from tests.support.till import till_key

PROBLEM_JSON = "application/problem+json"
VALID_BODIES = {
    "/v1/pos/lookup": b'{"card": "6001 2345 6789"}',
    "/v1/partner/reorders": (
        b'{"customer": "abc", "preference": "%s", "quantity": 1}' % str(uuid.uuid4()).encode()
    ),
    "/v1/partner/reorders/{id}/status": b'{"state": "accepted"}',
    "/v1/me/preferences": b'{"product": {"sku": "A-1", "name": "Chino"}}',
    "/v1/me/consents/pos": b'{"fields": ["product"]}',
    "/v1/me/checkout-codes": b'{"fields": ["product"]}',
    "/v1/me": b'{"card": "6001 2345 6789"}',
}
METHODS = {"/v1/me/consents/pos": "PUT", "/v1/me": "PATCH"}
KIND = {"/v1/pos/lookup": "pos_", "/v1/partner/reorders": "ptn_"}
# (content, content type): each is wrong in its own way
BAD_BODIES = {
    "empty object": (b"{}", "application/json"),
    "no content type": (None, None),
    "text/plain": (None, "text/plain"),
    "not JSON": (b"{card", "application/json"),
    "unknown field": (b'{"is_admin": true}', "application/json"),
    "no body": (b"", None),
}


def _request(path: str, body: str, headers: dict[str, str]) -> dict[str, Any]:
    content, content_type = BAD_BODIES[body]
    url = path.replace("{id}", str(uuid.uuid4()))
    if content_type:
        headers = {**headers, "Content-Type": content_type}
    return {
        "method": METHODS.get(path, "POST"),
        "url": url,
        "content": VALID_BODIES[path] if content is None else content,
        "headers": {**headers, "Idempotency-Key": str(uuid.uuid4())},
    }


def _assert_unauthenticated(response: Any) -> None:
    assert response.status_code == 401, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.headers["www-authenticate"].startswith("Bearer")


API_KEY_PATHS = ["/v1/pos/lookup", "/v1/partner/reorders", "/v1/partner/reorders/{id}/status"]


def _prefix(path: str) -> str:
    return "pos_" if path.startswith("/v1/pos/") else "ptn_"


@pytest.mark.parametrize("body", list(BAD_BODIES))
@pytest.mark.parametrize("path", API_KEY_PATHS)
async def test_an_unknown_api_key_with_a_bad_body_is_401(client, path, body):
    unknown = _prefix(path) + secrets.token_urlsafe(32)
    _assert_unauthenticated(await client.request(**_request(path, body, bearer(unknown))))


@pytest.mark.parametrize("path", API_KEY_PATHS)
async def test_a_revoked_api_key_with_a_bad_body_is_401(client, conn, path):
    if path.startswith("/v1/pos/"):
        credential, key = await till_key(conn)
    else:
        credential, key = await partner_key(conn)
    await credentials.revoke(conn, credential.id)
    for body in ("empty object", "no content type"):
        _assert_unauthenticated(await client.request(**_request(path, body, bearer(key))))


@pytest.mark.parametrize("path", API_KEY_PATHS)
async def test_a_valid_api_key_still_hears_what_is_wrong_with_the_body(client, conn, path):
    _, key = await (till_key(conn) if path.startswith("/v1/pos/") else partner_key(conn))
    for body, status in (("empty object", 400), ("no content type", 415), ("not JSON", 400)):
        response = await client.request(**_request(path, body, bearer(key)))
        assert response.status_code == status, (body, response.status_code, response.text)


async def test_an_unknown_insights_key_is_401(client):
    response = await client.get(
        "/v1/insights/discontinued-demand", headers=bearer("ins_" + secrets.token_urlsafe(32))
    )
    _assert_unauthenticated(response)


CUSTOMER_PATHS = ["/v1/me/preferences", "/v1/me/consents/pos", "/v1/me/checkout-codes", "/v1/me"]


@pytest.mark.parametrize("body", list(BAD_BODIES))
@pytest.mark.parametrize("path", CUSTOMER_PATHS)
async def test_a_bad_bearer_token_with_a_bad_body_is_401(client, issuer, path, body):
    expired = issuer.mint(f"someone-{uuid.uuid4()}@example.test", ttl_seconds=-3600)
    for token in ("not-a-token", expired, "ptn_" + secrets.token_urlsafe(32)):
        _assert_unauthenticated(await client.request(**_request(path, body, bearer(token))))
