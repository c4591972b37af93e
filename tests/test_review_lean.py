"""A hostile review of the till lookup's lean path (prefs.pos.api.LeanLookup) and of the feeds'
numbering (migration 0015): what a till, a partner or an operator can do that the two changes
answered differently from before.

The lookups are sent over a raw socket: httpx will not send a header value that ends in
whitespace, and tills (curl, a config file with a trailing space) do.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from prefs import db, feeds
from prefs.partners.service import encode_feed_cursor
from prefs.stores.service import encode_queue_cursor
from tests.support.customer import CHINOS, bearer, grant, keep
from tests.support.database import Database, admin, with_database
from tests.support.partner import partner_key, pull, reorder
from tests.support.stores import drain, queue
from tests.support.till import shopper, till_key
from tests.test_stores import placed, store_with_till

ORDINARY = b"application/json"  # what the lean path serves
NOT_ORDINARY = b"application/json; charset=utf-8"  # the same body, for the route


async def post_lookup(
    port: int, authorization: bytes, body: bytes, content_type: bytes, length: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST /v1/pos/lookup with the headers exactly as given; the status, headers and body."""
    declared = str(len(body)).encode() if length is None else length
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /v1/pos/lookup HTTP/1.1\r\nHost: till\r\nConnection: close\r\n"
            b"Authorization: " + authorization + b"\r\n"
            b"Content-Type: " + content_type + b"\r\n"
            b"Content-Length: " + declared + b"\r\n\r\n" + body
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # to the end: Connection: close
    finally:
        writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, content


def what_the_till_sees(status: int, content: bytes) -> tuple[int, Any]:
    body = json.loads(content)
    if isinstance(body, dict):
        body.pop("disclosure_id", None)  # per request
    return status, body


@pytest.mark.parametrize(
    "whitespace", [b" ", b"\t", b"\xa0", b"\x85"], ids=["space", "tab", "nbsp", "nel"]
)
async def test_a_till_key_with_trailing_whitespace_is_answered_as_the_route_answers_it(
    server, client, conn, new_customer, whitespace
):
    """The route's guard strips the key (str.strip: spaces, tabs, NBSP, NEL); the server passes
    a trailing one on. The lean path took the key with it and answered 401 where the route
    answers 200."""
    customer, card, _ = await shopper(new_customer, client)
    await grant(client, customer, fields=["product"])
    _, key = await till_key(conn)
    authorization = b"Bearer " + key.encode() + whitespace
    body = b'{"card": "%s"}' % card.encode()

    lean = await post_lookup(server.port, authorization, body, ORDINARY)
    routed = await post_lookup(server.port, authorization, body, NOT_ORDINARY)

    assert what_the_till_sees(lean[0], lean[2]) == what_the_till_sees(routed[0], routed[2])
    assert lean[0] == 200, lean[2]


async def test_a_content_length_of_thousands_of_digits_is_a_clear_400_not_a_500(server, conn):
    """Leading zeros pass the HTTP parser (the value is small); int() refuses a string of over
    4 300 digits, and the lean path raised outside its exception handling: a 500 without the
    request id or the security headers. The route answers 400."""
    _, key = await till_key(conn)
    body = b'{"card": "6001 2345 6789"}'
    length = b"0" * 4400 + str(len(body)).encode()

    status, headers, content = await post_lookup(
        server.port, b"Bearer " + key.encode(), body, ORDINARY, length
    )

    assert status == 400, content
    assert headers["content-type"] == "application/problem+json"
    assert headers["x-request-id"] and headers["x-content-type-options"] == "nosniff"


async def test_a_cursor_beyond_its_lists_counter_is_a_410_not_a_silent_skip(
    client, conn, vault, new_customer
):
    """A cursor past the last position its list has handed out (the database restored from a
    backup, or a downgrade and upgrade of 0015 that drew the same numbering again) named a place
    the list had not reached: its pages came back empty, with the same cursor, and every reorder
    that entered meanwhile was skipped."""
    partner, api_key = await partner_key(conn)
    fulfiller = f"partner:{partner.partner_id}"
    customer = await new_customer()
    preference = await keep(client, customer)
    await grant(client, customer, fulfiller, ["product"])
    await reorder(client, customer, preference["id"], fulfiller)
    await pull(client, api_key, want=1)
    last = await conn.fetchval(feeds.COUNTER, fulfiller)
    beyond = encode_feed_cursor(vault, partner.partner_id, last + 5)
    await reorder(client, customer, preference["id"], fulfiller)  # takes last + 1

    response = await client.get(
        "/v1/partner/reorders", headers=bearer(api_key), params={"after": beyond}
    )

    assert response.status_code == 410, response.text
    assert response.json()["type"].endswith("cursor-retired")

    store, till = await store_with_till(conn)
    shopper_at_store = await new_customer()
    await placed(client, shopper_at_store, await keep(client, shopper_at_store, CHINOS), store)
    await drain(client, till)
    last = await conn.fetchval(feeds.COUNTER, feeds.store(store))
    beyond = encode_queue_cursor(vault, store, last + 3)
    await placed(client, shopper_at_store, await keep(client, shopper_at_store, CHINOS), store)

    response = await queue(client, till, beyond)

    assert response.status_code == 410, response.text
    assert response.json()["type"].endswith("cursor-retired")


@pytest.fixture
async def empty_database(database: Database) -> AsyncIterator[str]:
    name = f"prefs_review_{secrets.token_hex(4)}"
    await admin(database.server_url, f"CREATE DATABASE {name}")
    try:
        yield with_database(database.server_url, name)
    finally:
        await admin(database.server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_a_schema_whose_0015_ran_before_the_numbering_goes_down_and_up_again(
    empty_database,
):
    """0015 was changed in place: a database the previous release migrated (as
    tests/test_rolling_deploy.py does) has positions but no feed_numbering, and this release's
    downgrade of 0015 stopped at DROP TABLE feed_numbering."""
    url = empty_database
    await asyncio.to_thread(db.migrate, url, "head")
    conn = await db.connect(url)
    try:
        await conn.execute("DROP TABLE feed_numbering")  # as the previous release's 0015 left it

        await asyncio.to_thread(db.downgrade, url, "0014")
        await asyncio.to_thread(db.migrate, url, "head")

        base = await conn.fetchval("SELECT base FROM feed_numbering")
        assert base >> feeds.NUMBERING_BITS >= 1  # numbered afresh
    finally:
        await conn.close()
