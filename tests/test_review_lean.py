"""A hostile review of the till lookup's lean path (prefs.pos.api.LeanLookup) and of the feeds'
numbering (migration 0015): what a till, a partner or an operator can do that the two changes
answered differently from before.

The lookups are sent over a raw socket: httpx will not send a header value that ends in
whitespace, and tills (curl, a config file with a trailing space) do.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.customer import grant
from tests.support.till import shopper, till_key

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
