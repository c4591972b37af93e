"""Page cursors are opaque: a forged, tampered, out-of-range or someone else's cursor is a clear
400, and no cursor shows a client a feed's position or a timestamp."""

from __future__ import annotations

import base64
import uuid

import httpx
import pytest

from tests.support.customer import bearer, grant, keep
from tests.support.partner import feed_page, partner_key, pull, reorder

PROBLEM_JSON = "application/problem+json"


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


def _unpadded_bytes(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert "after" in response.json()["detail"]


async def _partner_with_two_reorders(client, conn, new_customer):
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, fulfiller)
    for _ in range(2):
        assert (await reorder(client, customer, preference["id"], fulfiller)).status_code == 201
    return partner, api_key, customer, preference


@pytest.mark.parametrize(
    "xid",
    ["99999999999999999999", "18446744073709551616", "18446744073709551615", "9" * 19],
    ids=["20 nines", "2**64", "2**64-1", "19 nines"],
)
async def test_a_feed_cursor_beyond_the_transaction_counter_is_refused_not_a_500(client, conn, xid):
    _, api_key = await partner_key(conn)
    response = await client.get(
        "/v1/partner/reorders",
        headers=bearer(api_key),
        params={"after": _b64(f"{xid}:{uuid.uuid4()}").rstrip("=")},
    )
    assert_refused(response)


async def test_a_feed_cursor_does_not_reveal_the_partners_position(client, conn, new_customer):
    partner, api_key, *_ = await _partner_with_two_reorders(client, conn, new_customer)
    items, after = await pull(client, api_key, want=2)
    assert len(items) == 2 and after
    positions = await conn.fetchval(
        "SELECT array_agg(feed_position) FROM reorders WHERE partner_id = $1", partner.partner_id
    )
    assert len(positions) == 2
    raw = _unpadded_bytes(after)
    for position in positions:
        assert position.to_bytes(8, "big") not in raw
    for item in items:
        assert item["id"].encode() not in raw and uuid.UUID(item["id"]).bytes not in raw


async def test_a_partners_cursor_is_refused_for_another_partner(client, conn, new_customer):
    _, api_key, *_ = await _partner_with_two_reorders(client, conn, new_customer)
    _, other_key = await partner_key(conn)
    first = await feed_page(client, api_key, limit=1)
    assert first["items"] and first["next"]
    assert_refused(
        await client.get(
            "/v1/partner/reorders", headers=bearer(other_key), params={"after": first["next"]}
        )
    )
    # its own cursor keeps working, and leads to the second reorder
    second = await feed_page(client, api_key, first["next"], limit=1)
    assert [i["id"] for i in second["items"]] != [i["id"] for i in first["items"]]


def _tampered(cursor: str) -> list[str]:
    raw = bytearray(_unpadded_bytes(cursor))
    flips = []
    for position in (0, len(raw) // 2, len(raw) - 1):
        copy = bytearray(raw)
        copy[position] ^= 0x01
        flips.append(base64.urlsafe_b64encode(bytes(copy)).decode().rstrip("="))
    return [*flips, cursor[:-2], cursor + "AA", cursor.upper()]


async def test_a_tampered_feed_cursor_is_refused(client, conn, new_customer):
    _, api_key, *_ = await _partner_with_two_reorders(client, conn, new_customer)
    first = await feed_page(client, api_key, limit=1)
    for forged in _tampered(first["next"]):
        assert_refused(
            await client.get(
                "/v1/partner/reorders", headers=bearer(api_key), params={"after": forged}
            )
        )


async def test_customer_page_cursors_are_opaque_and_their_own(client, conn, new_customer):
    """The access log and the reorders list: a cursor holds no timestamp, and works only for the
    customer and the list it was made for."""
    _, api_key, customer, _ = await _partner_with_two_reorders(client, conn, new_customer)
    first_page = await feed_page(client, api_key, limit=1)  # two disclosures in the access log
    await feed_page(client, api_key, first_page["next"], limit=1)
    other = await new_customer()
    pages = {}
    for path in ("/v1/me/reorders", "/v1/me/access-log"):
        response = await client.get(path, headers=customer.headers, params={"limit": 1})
        assert response.status_code == 200, response.text
        pages[path] = response.json()
    reorders_next, log_next = (pages[path]["next"] for path in pages)
    assert reorders_next and log_next
    raw = _unpadded_bytes(reorders_next)
    first = pages["/v1/me/reorders"]["items"][0]
    assert first["created_at"][:10].encode() not in raw  # no date (a lone byte could be chance)
    assert first["id"].encode() not in raw and uuid.UUID(first["id"]).bytes not in raw
    # someone else's cursor, and a cursor of another list: refused
    assert_refused(
        await client.get("/v1/me/reorders", headers=other.headers, params={"after": reorders_next})
    )
    assert_refused(
        await client.get(
            "/v1/me/access-log", headers=customer.headers, params={"after": reorders_next}
        )
    )
    assert_refused(
        await client.get("/v1/me/access-log", headers=other.headers, params={"after": log_next})
    )
    assert (
        await client.get("/v1/me/access-log", headers=customer.headers, params={"after": log_next})
    ).status_code == 200
    for forged in _tampered(reorders_next):
        assert_refused(
            await client.get("/v1/me/reorders", headers=customer.headers, params={"after": forged})
        )
    following = await client.get(
        "/v1/me/reorders", headers=customer.headers, params={"limit": 1, "after": reorders_next}
    )
    assert following.status_code == 200
    assert following.json()["items"][0]["id"] != first["id"]
