"""The till lookup's lean path (prefs.pos.api.LeanLookup) answers exactly as the route does.

An ordinary lookup (a till key, a body declared `application/json`) is served by the lean path;
the same lookup declared `application/json; charset=utf-8` is not ordinary, so the route serves
it. Each pair below is asked both ways and must get the same status, headers and body (but for
what differs per request: the date, the request id, the disclosure id). Whatever the lean path
does not take must reach the route, with its body intact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from prefs.pos.api import LeanLookup
from tests.support.customer import bearer, grant
from tests.support.till import disclosures, fresh_card, shopper, till_key

ORDINARY = "application/json"
NOT_ORDINARY = "application/json; charset=utf-8"  # the same body, for the route
PER_REQUEST = {"date", "x-request-id"}


async def ask(
    client: httpx.AsyncClient, key: str, body: bytes, content_type: str, **headers: str
) -> tuple[httpx.Response, bool]:
    """The answer, and whether the lean path gave it."""
    before = LeanLookup.served
    response = await client.post(
        "/v1/pos/lookup",
        headers={**bearer(key), "content-type": content_type, **headers},
        content=body,
    )
    return response, LeanLookup.served > before


def comparable(response: httpx.Response) -> tuple[int, dict[str, str], Any]:
    body = response.json()
    if isinstance(body, dict) and "disclosure_id" in body:
        body = {**body, "disclosure_id": "(per request)"}
    headers = {k: v for k, v in response.headers.items() if k not in PER_REQUEST}
    return response.status_code, headers, body


async def both_ways(client: httpx.AsyncClient, key: str, body: bytes) -> tuple[Any, Any]:
    lean, by_lean = await ask(client, key, body, ORDINARY)
    routed, by_lean_too = await ask(client, key, body, NOT_ORDINARY)
    assert by_lean and not by_lean_too
    return comparable(lean), comparable(routed)


async def test_a_hit_is_answered_by_the_lean_path_as_the_route_answers_it(
    client, conn, new_customer
):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product", "attributes", "note"])
    _, key = await till_key(conn)

    lean, routed = await both_ways(client, key, b'{"card": "%s"}' % card.encode())

    assert lean == routed
    assert lean[0] == 200 and len(lean[2]["preferences"]) == 3
    assert await disclosures(conn, customer.id) == 2  # each answer logged, lean or not


async def test_misses_and_unknown_keys_are_answered_by_the_lean_path_as_the_route_answers_them(
    client, conn
):
    _, key = await till_key(conn)
    miss = b'{"card": "%s"}' % fresh_card().encode()
    lean, routed = await both_ways(client, key, miss)
    assert lean == routed and lean[0] == 404

    unknown_key = "pos_" + "x" * 40
    lean, routed = await both_ways(client, unknown_key, miss)
    assert lean == routed and lean[0] == 401
    assert lean[1]["www-authenticate"].startswith("Bearer")


async def test_a_throttled_till_is_refused_by_the_lean_path_as_the_route_refuses_it(
    client, conn, settings
):
    _, key = await till_key(conn)
    for _ in range(settings.lookup_misses_per_minute_per_key):
        miss, by_lean = await ask(client, key, b'{"card": "%s"}' % fresh_card().encode(), ORDINARY)
        assert miss.status_code == 404 and by_lean

    lean, routed = await both_ways(client, key, b'{"card": "%s"}' % fresh_card().encode())

    assert lean[0] == routed[0] == 429
    # the seconds left may tick over between the two answers
    assert {k: v for k, v in lean[1].items() if k != "retry-after"} == {
        k: v for k, v in routed[1].items() if k != "retry-after"
    }
    assert lean[2] == routed[2]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"card": "1234 5678 9012 3456", "card": "1"}', 400),  # a key twice
        (b'{"card": "1234", "code": "ABCDEFGH"}', 400),  # both
        (b"{}", 400),  # neither
        (b'{"card": "1234", "email": "x"}', 400),  # a field the schema does not have
        (b'{"card": ', 400),  # not JSON
        (b'["card"]', 400),
    ],
)
async def test_bodies_the_lean_path_does_not_take_reach_the_route_whole(client, conn, body, status):
    _, key = await till_key(conn)

    answer, by_lean = await ask(client, key, body, ORDINARY)
    unknown, unknown_by_lean = await ask(client, "pos_" + "y" * 40, body, ORDINARY)

    assert not by_lean and not unknown_by_lean
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert unknown.status_code == 401  # the key is checked before the body is judged


async def test_requests_that_are_not_ordinary_are_left_to_the_route(client, conn, new_customer):
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    _, key = await till_key(conn)
    body = b'{"card": "%s"}' % card.encode()

    declared_twice, twice_by_lean = await ask(
        client, key, body, ORDINARY, authorization=f"Bearer {key}"
    )

    async def in_chunks() -> AsyncIterator[bytes]:  # no length given: sent in chunks
        yield body[:5]
        yield body[5:]

    before = LeanLookup.served
    chunked = await client.post(
        "/v1/pos/lookup", headers={**bearer(key), "content-type": ORDINARY}, content=in_chunks()
    )
    chunked_by_lean = LeanLookup.served > before
    other_type, other_by_lean = await ask(client, key, body, "text/plain")
    no_key = await client.post("/v1/pos/lookup", json={"card": card})

    assert not twice_by_lean and not other_by_lean and not chunked_by_lean
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["preferences"][0]["product"]["name"]
    assert other_type.status_code == 415
    assert no_key.status_code == 401
    assert declared_twice.status_code in (200, 401)  # the route's reading of two keys, not ours


async def test_a_body_over_the_limit_is_refused_by_the_route(client, conn, settings):
    _, key = await till_key(conn)
    body = b'{"card": "%s"}' % (b"1" * settings.max_body_bytes)

    answer, by_lean = await ask(client, key, body, ORDINARY)

    assert not by_lean
    assert answer.status_code == 413
