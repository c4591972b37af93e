"""Hostile input: every malformed, oversized or malicious request gets a clear 4xx problem, and
nothing the customer keeps changes.

One customer (the "victim") holds a card, a preference, consents and reorders, and every kind of
caller (the customer, a till, a partner) throws bad requests at every endpoint that takes a body,
a path id, a page size or a cursor. Before and after each request the victim's data is read back
through the API and counted row by row in the database: both must be exactly as they were.
"""

from __future__ import annotations

import base64
import json
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from prefs import credentials, db
from tests.support.customer import CHINOS, bearer
from tests.support.servers import prefs_serve
from tests.support.stores import in_directory
from tests.support.till import confirm_card
from tests.test_request_log import serve_environment

PROBLEM_JSON = "application/problem+json"
HOSTILE = "__HOSTILE__"  # where a hostile fragment goes in an otherwise valid body

# Every table holding a customer's rows: counted and fingerprinted before and after each request.
CUSTOMER_TABLES = (
    "customers",
    "customer_keys",
    "customer_subjects",
    "card_index",
    "preferences",
    "consents",
    "consent_ledger",
    "checkout_codes",
    "access_log",
    "reorders",
    "partner_refs",
    "idempotency_keys",
)
ROWS = (
    " UNION ALL ".join(
        f"SELECT '{table}', count(*) || ' ' "
        f"|| coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
        f"FROM {table} t WHERE customer_id = $1"
        for table in CUSTOMER_TABLES
    )
    + " UNION ALL SELECT 'all customers', count(*)::text FROM customers"
)
CUSTOMER_VIEWS = ("/v1/me", "/v1/me/preferences")


@dataclass
class Victim:
    id: uuid.UUID
    headers: dict[str, str]
    card: str
    preference: str
    till: dict[str, str]
    partner: dict[str, str]
    ref: str
    partner_id: uuid.UUID
    partner_reorder: str
    client: httpx.AsyncClient
    conn: Any

    async def stored(self) -> dict[str, Any]:
        """What the customer sees of their data, and how many rows hold it."""
        views = {}
        for path in CUSTOMER_VIEWS:
            response = await self.client.get(path, headers=self.headers)
            assert response.status_code == 200, response.text
            views[path] = response.json()
        rows = dict(await self.conn.fetch(ROWS, self.id))
        return {"views": views, "rows": rows}


@pytest.fixture(scope="module")
async def victim(server, database, issuer) -> AsyncIterator[Victim]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        conn = await db.connect(database.url)
        try:
            yield await _make_victim(client, conn, issuer)
        finally:
            await conn.close()


async def _make_victim(client: httpx.AsyncClient, conn: Any, issuer: Any) -> Victim:
    async def ok(response: httpx.Response, status: int = 200) -> Any:
        assert response.status_code == status, response.text
        return response.json()

    headers = bearer(issuer.mint(f"victim-{uuid.uuid4()}@example.test"))
    card = f"{secrets.randbelow(10**15) + 10**15}"
    me = await ok(await client.post("/v1/me", headers=headers, json={"card": card}), 201)
    preference = await ok(
        await client.post("/v1/me/preferences", headers=headers, json=CHINOS), 201
    )
    _, till = await credentials.create(conn, "pos", "Till 3", store=await in_directory(conn))
    await confirm_card(client, till, SimpleNamespace(headers=headers), card)
    partner_cred, partner = await credentials.create(
        conn, "partner", f"Tailor {uuid.uuid4().hex[:8]}"
    )
    audience = f"partner:{partner_cred.partner_id}"
    everything = {"fields": ["product", "attributes", "note"]}
    for name in ("pos", audience):
        await ok(await client.put(f"/v1/me/consents/{name}", headers=headers, json=everything))
    consents = await ok(await client.get("/v1/me/consents", headers=headers))
    [ref] = [c["reference"] for c in consents["items"] if c["audience"] == audience]
    reorder = await ok(
        await client.post(
            f"/v1/me/preferences/{preference['id']}/reorders",
            headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": 1, "fulfiller": audience},
        ),
        201,
    )
    # the till can see the victim, so a lookup that wrongly succeeded would show in the access log
    await ok(await client.post("/v1/pos/lookup", headers=bearer(till), json={"card": card}))
    return Victim(
        id=uuid.UUID(me["id"]),
        headers=headers,
        card=card,
        preference=preference["id"],
        till=bearer(till),
        partner=bearer(partner),
        ref=ref,
        partner_id=partner_cred.partner_id,
        partner_reorder=reorder["id"],
        client=client,
        conn=conn,
    )


def assert_clear_problem(response: httpx.Response, status: int | tuple[int, ...]) -> None:
    expected = status if isinstance(status, tuple) else (status,)
    assert response.status_code in expected, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith(PROBLEM_JSON), response.headers
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["type"].startswith("urn:prefs:problem:"), problem
    assert problem["title"], problem


async def unchanged(victim: Victim, send: Callable[[], Any]) -> httpx.Response:
    """Send a request and check that nothing the victim keeps changed."""
    before = await victim.stored()
    response: httpx.Response = await send()
    after = await victim.stored()
    assert after == before, (
        f"stored data changed after {response.request.method} {response.request.url}"
    )
    return response


# --- bodies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """An endpoint that takes a JSON body, a valid body for it, and where hostile values go."""

    method: str
    path: str
    caller: str  # customer, till or partner
    body: Callable[[Victim], dict[str, Any]]  # valid, with HOSTILE where the hostile value goes
    extra_headers: tuple[tuple[str, str], ...] = ()
    idempotent_key: bool = False

    def url(self, victim: Victim) -> str:
        return self.path.format(preference=victim.preference, reorder=victim.partner_reorder)

    def headers(self, victim: Victim) -> dict[str, str]:
        auth = {"customer": victim.headers, "till": victim.till, "partner": victim.partner}[
            self.caller
        ]
        headers = {**auth, **dict(self.extra_headers)}
        if self.idempotent_key:
            headers["Idempotency-Key"] = str(uuid.uuid4())
        return headers


ENDPOINTS = {
    "new preference": Endpoint(
        "POST", "/v1/me/preferences", "customer", lambda v: {**CHINOS, "note": HOSTILE}
    ),
    "preference edit": Endpoint(
        "PATCH",
        "/v1/me/preferences/{preference}",
        "customer",
        lambda v: {"note": HOSTILE},
        extra_headers=(("If-Match", "*"),),
    ),
    "loyalty card": Endpoint("PATCH", "/v1/me", "customer", lambda v: {"card": HOSTILE}),
    "consent": Endpoint(
        "PUT",
        "/v1/me/consents/pos",
        "customer",
        lambda v: {"fields": [HOSTILE], "preferences": "all"},
    ),
    "checkout code": Endpoint(
        "POST", "/v1/me/checkout-codes", "customer", lambda v: {"fields": [HOSTILE]}
    ),
    "reorder": Endpoint(
        "POST",
        "/v1/me/preferences/{preference}/reorders",
        "customer",
        lambda v: {"quantity": 1, "fulfiller": HOSTILE},
        idempotent_key=True,
    ),
    "till lookup": Endpoint("POST", "/v1/pos/lookup", "till", lambda v: {"card": HOSTILE}),
    "partner reorder": Endpoint(
        "POST",
        "/v1/partner/reorders",
        "partner",
        lambda v: {"customer": HOSTILE, "preference": v.preference, "quantity": 1},
        idempotent_key=True,
    ),
    "reorder status": Endpoint(
        "POST", "/v1/partner/reorders/{reorder}/status", "partner", lambda v: {"state": HOSTILE}
    ),
}


def with_fragment(body: dict[str, Any], fragment: bytes) -> bytes:
    """The body as JSON text with the raw bytes ``fragment`` in place of the hostile value."""
    text = json.dumps(body, ensure_ascii=False).encode()
    assert text.count(f'"{HOSTILE}"'.encode()) == 1
    return text.replace(f'"{HOSTILE}"'.encode(), fragment)


# Raw JSON fragments put where a string value belongs.
FRAGMENTS: dict[str, bytes] = {
    "NUL escaped": b'"6001\\u00002345"',
    "NUL raw": b'"6001\x002345"',
    "control character escaped": b'"6001\\u001b[2J"',
    "lone high surrogate escaped": b'"\\ud800"',
    "lone low surrogate escaped": b'"\\udc00"',
    "high surrogate then text": b'"\\ud83dabc"',
    "lone surrogate as raw bytes": b'"\xed\xa0\x80"',
    "invalid UTF-8": b'"\xff\xfe"',
    "overlong UTF-8": b'"\xc0\xaf"',
    "truncated UTF-8": b'"\xe2\x82"',
    "very long string": b'"' + b"7" * 20_000 + b'"',
    "deep nesting": b"[" * 10_000 + b"]" * 10_000,
    "nesting just past the limit": b"[" * 17 + b"]" * 17,
    "huge array": b"[" + b",".join([b"0"] * 20_000) + b"]",
    "huge object": b"{" + b",".join(b'"k%d":0' % i for i in range(3_000)) + b"}",
    "number": b"600123456789",
    "boolean": b"true",
    "object": b"{}",
    "NaN": b"NaN",
    "Infinity": b"-Infinity",
    "huge exponent": b"1e400",
    "huge integer": b"9" * 5_000,
}


# Whole bodies: (raw bytes or a builder, content type) → expected status
def _whole_bodies(max_body: int) -> dict[str, tuple[Callable[[dict[str, Any]], bytes], str, int]]:
    def valid(body: dict[str, Any]) -> bytes:
        return with_fragment(body, b'"600123456789"')

    def first_key(body: dict[str, Any]) -> str:
        return next(iter(body))

    return {
        "oversized": (
            lambda b: with_fragment(b, b'"' + b"7" * (max_body + 1) + b'"'),
            "application/json",
            413,
        ),
        "truncated JSON": (lambda b: valid(b)[:-1], "application/json", 400),
        "trailing garbage": (lambda b: valid(b) + b"x", "application/json", 400),
        "two documents": (lambda b: valid(b) + valid(b), "application/json", 400),
        "byte order mark": (lambda b: b"\xef\xbb\xbf" + valid(b), "application/json", 400),
        "UTF-16": (lambda b: valid(b).decode().encode("utf-16"), "application/json", 400),
        "UTF-32": (lambda b: valid(b).decode().encode("utf-32-le"), "application/json", 400),
        "duplicate key": (
            lambda b: (
                b'{"%s": %s, ' % (first_key(b).encode(), json.dumps(b[first_key(b)]).encode())
                + valid(b)[1:]
            ),
            "application/json",
            400,
        ),
        "duplicate key nested": (
            lambda b: b'{"x": {"a": 1, "a": 1}, ' + valid(b)[1:],
            "application/json",
            400,
        ),
        "extra field": (lambda b: valid(b)[:-1] + b', "is_admin": true}', "application/json", 400),
        "array": (lambda b: b"[" + valid(b) + b"]", "application/json", 400),
        "string": (lambda b: b'"hello"', "application/json", 400),
        "null": (lambda b: b"null", "application/json", 400),
        "empty JSON object": (lambda b: b"{}", "application/json", 400),  # not for a PATCH
        "whitespace only": (lambda b: b"   ", "application/json", 400),
        "text/plain": (valid, "text/plain", 415),
        "form": (lambda b: b"card=600123456789", "application/x-www-form-urlencoded", 415),
        "multipart": (
            lambda b: b"--x\r\n\r\n" + valid(b) + b"\r\n--x--",
            "multipart/form-data; boundary=x",
            415,
        ),
        "XML": (lambda b: b"<card>600123456789</card>", "application/xml", 415),
        "no content type": (valid, "", 415),
        "json lookalike": (valid, "application/jsonp", 415),
    }


# An empty PATCH of a preference is a valid no-op, and a checkout code request that is empty
# or null (as no body) asks for the defaults (product and attributes of everything): none of
# them is a hostile body.
VALID = {
    ("preference edit", "empty JSON object"),
    ("checkout code", "empty JSON object"),
    ("checkout code", "null"),
}
WHOLE_BODY_CASES = [
    (endpoint, body)
    for endpoint in ENDPOINTS
    for body in _whole_bodies(1024)
    if (endpoint, body) not in VALID
]


@pytest.mark.parametrize("fragment", list(FRAGMENTS))
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_a_hostile_value_in_a_body_is_refused_and_changes_nothing(victim, endpoint, fragment):
    target = ENDPOINTS[endpoint]
    content = with_fragment(target.body(victim), FRAGMENTS[fragment])
    response = await unchanged(
        victim,
        lambda: victim.client.request(
            target.method,
            target.url(victim),
            content=content,
            headers={**target.headers(victim), "Content-Type": "application/json"},
        ),
    )
    assert_clear_problem(response, 400)


@pytest.mark.parametrize(("endpoint", "body"), WHOLE_BODY_CASES)
async def test_a_hostile_body_is_refused_and_changes_nothing(victim, settings, endpoint, body):
    target = ENDPOINTS[endpoint]
    build, content_type, status = _whole_bodies(settings.max_body_bytes)[body]
    headers = target.headers(victim)
    if content_type:
        headers["Content-Type"] = content_type
    content = build(target.body(victim))
    response = await unchanged(
        victim,
        lambda: victim.client.request(
            target.method, target.url(victim), content=content, headers=headers
        ),
    )
    assert_clear_problem(response, status)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
async def test_an_oversized_body_sent_in_chunks_is_refused_and_changes_nothing(
    victim, settings, endpoint
):
    target = ENDPOINTS[endpoint]

    head, tail = with_fragment(target.body(victim), b'"\x01"').split(b"\x01")

    async def chunks() -> AsyncIterator[bytes]:
        yield head
        for _ in range(settings.max_body_bytes // 4096 + 2):
            yield b"7" * 4096
        yield tail

    response = await unchanged(
        victim,
        lambda: victim.client.request(
            target.method,
            target.url(victim),
            content=chunks(),
            headers={**target.headers(victim), "Content-Type": "application/json"},
        ),
    )
    assert_clear_problem(response, 413)


async def test_a_content_length_beyond_the_limit_is_refused_before_the_body_arrives(
    victim, server, settings
):
    request = (
        f"POST /v1/me/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {victim.headers['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {settings.max_body_bytes * 1000}\r\n"
        "\r\n{"
    ).encode()
    before = await victim.stored()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"application/problem+json" in answer
    assert await victim.stored() == before


# A single-line value must not end in a line break (a regex `$` also matches before a final "\n").
SINGLE_LINE_VALUES = {
    "sku": lambda v: {**CHINOS, "product": {**CHINOS["product"], "sku": "CL-CHINO-3434\n"}},
    "product name": lambda v: {**CHINOS, "product": {**CHINOS["product"], "name": "Classic\n"}},
    "brand": lambda v: {**CHINOS, "product": {**CHINOS["product"], "brand": "Acme\n"}},
    "category": lambda v: {**CHINOS, "product": {**CHINOS["product"], "category": "trousers\n"}},
    "attribute name": lambda v: {**CHINOS, "attributes": {"waist\n": "34"}},
    "attribute value": lambda v: {**CHINOS, "attributes": {"waist": "34\n"}},
}


@pytest.mark.parametrize("field", list(SINGLE_LINE_VALUES))
async def test_a_single_line_value_ending_in_a_line_break_is_refused(victim, field):
    response = await unchanged(
        victim,
        lambda: victim.client.post(
            "/v1/me/preferences", headers=victim.headers, json=SINGLE_LINE_VALUES[field](victim)
        ),
    )
    assert_clear_problem(response, 400)


@pytest.mark.parametrize(
    "fulfiller",
    [
        "store\n",
        "\nstore",
        "partner:{partner}\n",
        "partner:" + "-" * 36,  # the shape of a UUID's characters, but not a UUID
        "partner:" + "f" * 36,
        "partner: {partner}",
    ],
)
async def test_a_fulfiller_that_is_not_store_or_a_partner_id_is_refused(victim, fulfiller):
    response = await unchanged(
        victim,
        lambda: victim.client.post(
            f"/v1/me/preferences/{victim.preference}/reorders",
            headers={**victim.headers, "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": 1, "fulfiller": fulfiller.format(partner=victim.partner_id)},
        ),
    )
    assert_clear_problem(response, 400)


# --- cards and codes in other scripts ---------------------------------------------------------


def _in_digits(card: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(digit)) for digit in card)


NON_ASCII_CARDS: dict[str, Callable[[str], str]] = {
    "Arabic-Indic": lambda card: _in_digits(card, "\u0660"),
    "Extended Arabic-Indic": lambda card: _in_digits(card, "\u06f0"),
    "Devanagari": lambda card: _in_digits(card, "\u0966"),
    "Thai": lambda card: _in_digits(card, "\u0e50"),
    "fullwidth": lambda card: _in_digits(card, "\uff10"),
    "mathematical bold": lambda card: _in_digits(card, "\U0001d7ce"),
    "one digit swapped": lambda card: card[:-1] + _in_digits(card[-1], "\u0660"),
    "superscripts": lambda card: card.translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")),
    "no-break spaces": lambda card: "\u00a0".join(card[i : i + 4] for i in range(0, len(card), 4)),
    "unicode hyphens": lambda card: "\u2010".join(card[i : i + 4] for i in range(0, len(card), 4)),
    "zero-width spaces": lambda card: "\u200b".join(card),
}


@pytest.mark.parametrize("script", list(NON_ASCII_CARDS))
async def test_a_card_in_non_ascii_digits_is_refused_at_the_till_and_when_kept(victim, script):
    # the victim's own card number, written in another script: a lenient int() would find them
    card = NON_ASCII_CARDS[script](victim.card)
    looked_up = await unchanged(
        victim,
        lambda: victim.client.post("/v1/pos/lookup", headers=victim.till, json={"card": card}),
    )
    assert_clear_problem(looked_up, 400)
    kept = await unchanged(
        victim, lambda: victim.client.patch("/v1/me", headers=victim.headers, json={"card": card})
    )
    assert_clear_problem(kept, 400)


@pytest.mark.parametrize(
    "code",
    [
        "\uff21\uff22\uff23\uff24\uff12\uff13\uff14\uff15",  # fullwidth ABCD2345
        "ABCD234\uff15",
        "ABCD\u200b2345",
        "abcd2345\u0000",
        "\u0391\u0392\u0393\u03942345",  # Greek capitals that look like A, B
        "A" * 65,
    ],
)
async def test_a_checkout_code_in_lookalike_characters_is_refused(victim, code):
    response = await unchanged(
        victim,
        lambda: victim.client.post("/v1/pos/lookup", headers=victim.till, json={"code": code}),
    )
    assert_clear_problem(response, 400)


@pytest.mark.parametrize("script", ["Arabic-Indic", "fullwidth", "no-break spaces"])
async def test_an_enrolment_with_a_non_ascii_card_is_refused_and_enrols_nobody(
    client, issuer, conn, script
):
    headers = bearer(issuer.mint(f"hostile-{uuid.uuid4()}@example.test"))
    customers = await conn.fetchval("SELECT count(*) FROM customers")
    card = NON_ASCII_CARDS[script](f"{secrets.randbelow(10**15) + 10**15}")
    response = await client.post("/v1/me", headers=headers, json={"card": card})
    assert_clear_problem(response, 400)
    assert_clear_problem(await client.get("/v1/me", headers=headers), 404)
    assert await conn.fetchval("SELECT count(*) FROM customers") == customers


# --- paths -------------------------------------------------------------------------------------

BAD_IDS = [
    "not-a-uuid",
    "123",
    "00000000-0000-0000-0000-00000000000g",
    "00000000-0000-0000-0000-0000000000000",
    "0" * 5_000,
    "%00",
    "%2e%2e%2f%2e%2e",
    "..%2F..%2Fetc%2Fpasswd",
    "%E2%80%8B",
    "'%20OR%201=1--",
    "%F0%9F%91%96",
    "{00000000-0000-0000-0000-000000000000}",
    "-1",
    "9" * 40,
]
ID_ROUTES = [
    ("GET", "/v1/me/preferences/{}", "customer", None),
    ("PATCH", "/v1/me/preferences/{}", "customer", {"note": "changed"}),
    ("DELETE", "/v1/me/preferences/{}", "customer", None),
    ("POST", "/v1/me/preferences/{}/reorders", "customer", {"quantity": 1}),
    ("POST", "/v1/me/reorders/{}/cancel", "customer", None),
    ("POST", "/v1/partner/reorders/{}/status", "partner", {"state": "declined"}),
    ("GET", "/v1/partner/customers/{}/preferences", "partner", None),
    ("PUT", "/v1/me/consents/{}", "customer", {"fields": ["product"]}),
    ("DELETE", "/v1/me/consents/{}", "customer", None),
]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(
    ("method", "template", "caller", "body"),
    ID_ROUTES,
    ids=[f"{m} {t}" for m, t, _, _ in ID_ROUTES],
)
async def test_an_invalid_id_in_a_path_is_a_clear_problem(
    victim, method, template, caller, body, bad
):
    headers = dict(victim.headers if caller == "customer" else victim.partner)
    headers |= {"If-Match": "*", "Idempotency-Key": str(uuid.uuid4())}
    response = await unchanged(
        victim,
        lambda: victim.client.request(method, template.format(bad), headers=headers, json=body),
    )
    assert_clear_problem(response, (400, 404))


# --- page sizes and cursors --------------------------------------------------------------------

PAGES = [
    ("/v1/me/access-log", "customer"),
    ("/v1/me/reorders", "customer"),
    ("/v1/me/consents/history", "customer"),
    ("/v1/partner/reorders", "partner"),
]
BAD_LIMITS = [
    "-1",
    "0",
    "201",
    "-9223372036854775809",
    str(2**31),
    str(2**63),
    "1" + "0" * 30,
    "abc",
    "1.5",
    "1e9",
    "0x10",
    "",
    " 10",
    "+5",
    "10%00",
    "\u0661\u0660",  # Arabic-Indic 10
    "\uff11\uff10",  # fullwidth 10
    "NaN",
    "[]",
]


@pytest.mark.parametrize("limit", BAD_LIMITS)
@pytest.mark.parametrize(("path", "caller"), PAGES, ids=[p for p, _ in PAGES])
async def test_a_page_size_out_of_range_or_not_a_number_is_refused(victim, path, caller, limit):
    headers = victim.headers if caller == "customer" else victim.partner
    response = await unchanged(
        victim, lambda: victim.client.get(f"{path}?limit={limit}", headers=headers)
    )
    assert_clear_problem(response, 400)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


ZERO = "00000000-0000-0000-0000-000000000000"
BAD_CURSORS = {
    "/v1/me/access-log": (
        "after",
        [
            "x",
            "%00",
            "a" * 5_000,
            _b64(f"0001-01-01T00:00:00+14:00|{ZERO}"),
            _b64(f"9999-12-31T23:59:59-14:00|{ZERO}"),
            _b64("now|x"),
        ],
    ),
    "/v1/me/reorders": (
        "after",
        [
            "x",
            "%00",
            "a" * 5_000,
            _b64(f"0001-01-01T00:00:00+14:00|{ZERO}"),
            _b64(f"9999-12-31T23:59:59-14:00|{ZERO}"),
            _b64("now|x"),
        ],
    ),
    "/v1/me/consents/history": (
        "before",
        ["x", "-1", "1.5", "99999999999999999999", "9223372036854775808", "\u0661", "a" * 5_000],
    ),
    "/v1/partner/reorders": (
        "after",
        ["x", "%00", "a" * 5_000, _b64("-1:" + ZERO), _b64("1:not-a-uuid"), _b64("\u0661:" + ZERO)],
    ),
}


@pytest.mark.parametrize(
    ("path", "cursor"),
    [(path, cursor) for path, (_, cursors) in BAD_CURSORS.items() for cursor in cursors],
)
async def test_a_forged_page_cursor_is_refused(victim, path, cursor):
    name = BAD_CURSORS[path][0]
    headers = victim.partner if path.startswith("/v1/partner/") else victim.headers
    response = await unchanged(
        victim, lambda: victim.client.get(f"{path}?{name}={cursor}", headers=headers)
    )
    assert_clear_problem(response, 400)


# --- headers -----------------------------------------------------------------------------------


def answered_by_the_app(response: httpx.Response) -> bool:
    """Every answer of the app carries a request id; one without it came from the HTTP server."""
    return "x-request-id" in response.headers


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/me", None),
        ("POST", "/v1/pos/lookup", "card"),
    ],
)
@pytest.mark.parametrize("shape", ["one 60 KB header", "2000 small headers", "a 1 MB header"])
async def test_very_long_headers_are_refused(victim, method, path, body, shape):
    """Whoever answers (the HTTP server or the app), a request with huge headers gets a 4xx."""
    headers = dict(victim.till if path == "/v1/pos/lookup" else victim.headers)
    if shape == "one 60 KB header":
        headers["X-Padding"] = "a" * 60_000
    elif shape == "a 1 MB header":
        headers["X-Padding"] = "a" * 1_000_000
    else:
        headers |= {f"X-Padding-{i}": "a" * 30 for i in range(2_000)}
    json_body = {"card": victim.card} if body == "card" else body
    response = await unchanged(
        victim, lambda: victim.client.request(method, path, headers=headers, json=json_body)
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if answered_by_the_app(response):
        assert_clear_problem(response, (400, 413, 431))


@pytest.mark.parametrize(
    "token",
    ["a" * 60_000, "e" * 30_000 + "." + "e" * 30_000 + ".x", "pos_" + "a" * 60_000, "\u00ff" * 10],
)
async def test_an_absurd_bearer_token_is_refused(victim, token):
    for method, path, body in (
        ("GET", "/v1/me", None),
        ("POST", "/v1/pos/lookup", {"card": victim.card}),
    ):
        response = await unchanged(
            victim,
            lambda m=method, p=path, b=body: victim.client.request(
                m, p, headers={"Authorization": f"Bearer {token}".encode("latin-1")}, json=b
            ),
        )
        # a 60 KB token is refused before it is even read: headers over 16 KiB get 431
        assert_clear_problem(response, (401, 431) if len(token) > 16_000 else 401)


@pytest.mark.parametrize(
    "if_match",
    [
        '"-1"',
        '"99999999999"',
        '"\u0661"'.encode(),
        '"1", "2"',
        "1;2",
        '"' + "9" * 5_000 + '"',
        "W/",
        '""',
    ],
)
async def test_a_malformed_if_match_is_refused(victim, if_match):
    for method, body in (("PATCH", {"note": "changed"}), ("DELETE", None)):
        response = await unchanged(
            victim,
            lambda m=method, b=body: victim.client.request(
                m,
                f"/v1/me/preferences/{victim.preference}",
                headers={**victim.headers, "If-Match": if_match},
                json=b,
            ),
        )
        assert_clear_problem(response, (400, 412))


@pytest.mark.parametrize("key", ["", "a" * 201, "ключ".encode(), "a b", "\u00e9".encode("latin-1")])
async def test_a_malformed_idempotency_key_is_refused(victim, key):
    for path, headers, body in (
        (f"/v1/me/preferences/{victim.preference}/reorders", victim.headers, {"quantity": 1}),
        (
            "/v1/partner/reorders",
            victim.partner,
            {"customer": victim.ref, "preference": victim.preference, "quantity": 1},
        ),
    ):
        response = await unchanged(
            victim,
            lambda p=path, h=headers, b=body: victim.client.post(
                p, headers={**h, "Idempotency-Key": key}, json=b
            ),
        )
        assert_clear_problem(response, 400)


@pytest.mark.parametrize("request_id", ["a b", "x" * 65, '{"level":"error"}', "é"])
async def test_a_hostile_request_id_is_replaced_not_echoed(victim, request_id):
    response = await victim.client.get(
        "/v1/me", headers={**victim.headers, "X-Request-ID": request_id.encode()}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] != request_id
    assert len(response.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Length: -5\r\n",
        b"Content-Length: 5\r\nContent-Length: 7\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"X-Nul: a\x00b\r\n",
        b"X-Bad\r\n",
        b"Content-Length: +2\r\n",
        b"Content-Length: 0x02\r\n",
        b"Content-Length: " + b"9" * 30 + b"\r\n",
    ],
)
async def test_a_malformed_http_request_is_refused_by_the_server(victim, server, raw):
    """Framing errors are answered by the HTTP server, before the app: a 4xx problem+json all
    the same (prefs.serving), and nothing stored changes."""
    request = (
        b"POST /v1/me/preferences HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: {victim.headers['Authorization']}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + raw
        + b"\r\n{}"
    )
    before = await victim.stored()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert headers[b"content-type"] == b"application/problem+json", answer[:300]
    assert json.loads(body)["status"] == status, answer[:300]
    assert await victim.stored() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_prefs_serve_answers_a_request_it_cannot_parse_with_a_problem(settings, database, workers):
    """`prefs serve` (one process, or worker processes) answers a malformed Content-Length with
    the service's problem+json, not uvicorn's text/plain."""
    with prefs_serve(serve_environment(settings, database.url), workers=workers) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx")
            answer = read_answer(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"\r\ncontent-type: application/problem+json\r\n" in head, answer
    assert b"\r\nx-content-type-options: nosniff\r\n" in head, answer
    assert json.loads(body)["type"] == "urn:prefs:problem:bad-request", answer


def read_answer(sock: socket.socket) -> bytes:
    """An HTTP/1.1 answer with a Content-Length, whole."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, answer
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, answer
        body += chunk
    return head + b"\r\n\r\n" + body


# --- timestamps, dates and numbers at and past their ranges (no overflow reaches the database) ---


@pytest.mark.parametrize(
    "expires_at",
    [
        "9999-12-31T23:59:59-14:00",  # past the year 9999 once in UTC
        "9999-12-31T23:59:59.999999-00:01",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+14:00",  # before the year 1 once in UTC
        "2200-01-01T00:00:00Z",  # further ahead than a consent may run
    ],
)
async def test_a_consent_expiry_out_of_range_is_refused_naming_the_field(victim, expires_at):
    response = await unchanged(
        victim,
        lambda: victim.client.put(
            "/v1/me/consents/pos",
            headers=victim.headers,
            json={"fields": ["product"], "expires_at": expires_at},
        ),
    )
    assert_clear_problem(response, 400)
    problem = response.json()
    assert "expires_at" in problem["detail"], problem
    assert [e["key"] for e in problem["errors"]] == ["expires_at"], problem


NUMBERS_OUT_OF_RANGE = ["0", "-1", str(2**31), str(2**63), str(2**64), "-" + str(2**63 + 1)]
NUMBER_FIELDS = {
    # field: (endpoint, the body with HOSTILE where the number goes)
    "rank": ("new preference", lambda v: {**CHINOS, "rank": HOSTILE}),
    "purchases": ("new preference", lambda v: {**CHINOS, "purchases": HOSTILE}),
    "edited rank": ("preference edit", lambda v: {"rank": HOSTILE}),
    "ttl_seconds": (
        "checkout code",
        lambda v: {"fields": ["product"], "ttl_seconds": HOSTILE},
    ),
    "quantity": ("reorder", lambda v: {"quantity": HOSTILE}),
    "partner quantity": (
        "partner reorder",
        lambda v: {"customer": v.ref, "preference": v.preference, "quantity": HOSTILE},
    ),
}


@pytest.mark.parametrize("number", NUMBERS_OUT_OF_RANGE)
@pytest.mark.parametrize("field", list(NUMBER_FIELDS))
async def test_a_number_out_of_range_is_refused_naming_the_field(victim, field, number):
    endpoint, body = NUMBER_FIELDS[field]
    target = ENDPOINTS[endpoint]
    if field == "purchases" and number == "0":
        return  # nothing bought yet is a count in range
    content = with_fragment(body(victim), number.encode())
    response = await unchanged(
        victim,
        lambda: victim.client.request(
            target.method,
            target.url(victim),
            content=content,
            headers={**target.headers(victim), "Content-Type": "application/json"},
        ),
    )
    assert_clear_problem(response, 400)
    assert [e["key"] for e in response.json()["errors"]] == [field.split()[-1]], response.json()


@pytest.mark.parametrize(
    "day", ["0000-01-01", "10000-01-01", "9999-13-01", "2026-02-30", "-0001-01-01", "2026-1-1"]
)
async def test_a_last_purchase_date_that_is_no_date_is_refused(victim, day):
    response = await unchanged(
        victim,
        lambda: victim.client.post(
            "/v1/me/preferences",
            headers=victim.headers,
            json={**CHINOS, "last_purchased_on": day},
        ),
    )
    assert_clear_problem(response, 400)
    assert "last_purchased_on" in json.dumps(response.json()["errors"])
