"""Who may call what: every route of the app against every kind of caller.

The table below is the authorization contract. Each route lists the principals allowed on it
and the status each of them gets for a well-formed request; everyone else must be refused with
401 or 403 as problem+json. A route the app serves that is missing from the table fails the
test, so a new endpoint cannot ship without a decision about who may call it.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar.routes import HTTPRoute

from prefs import credentials
from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.settings import Settings, load
from tests.support.customer import CHINOS, bearer
from tests.support.stores import FROM_HIGH_STREET, in_directory

PROBLEM_JSON = "application/problem+json"

ANONYMOUS = "anonymous"
CUSTOMER_A = "customer A"
CUSTOMER_B = "customer B"
TILL = "till"
REVOKED_TILL = "revoked till"
PARTNER = "partner with consent"
OTHER_PARTNER = "partner without consent"
INSIGHTS = "insights"

# The order requests are sent in: customer A (the owner of every id in the paths) comes last,
# so that a destructive request (erasure, deletion) only runs after everyone else probed it.
PRINCIPALS = (
    ANONYMOUS,
    TILL,
    REVOKED_TILL,
    PARTNER,
    OTHER_PARTNER,
    INSIGHTS,
    CUSTOMER_B,
    CUSTOMER_A,
)


@dataclass(frozen=True)
class Access:
    """The status each allowed principal gets; every other principal is refused (401/403)."""

    statuses: Mapping[str, int] = field(default_factory=dict)

    @property
    def allowed(self) -> frozenset[str]:
        return frozenset(self.statuses)


def everyone(status: int = 200) -> Access:
    return Access({principal: status for principal in PRINCIPALS})


def customers(a: int, b: int) -> Access:
    """Customer routes: customers only. ``b`` is what B gets when the path names A's resource."""
    return Access({CUSTOMER_A: a, CUSTOMER_B: b})


def partners(with_consent: int, without_consent: int) -> Access:
    return Access({PARTNER: with_consent, OTHER_PARTNER: without_consent})


# Path parameters are filled with customer A's real ids (and A's pairwise reference for the
# consenting partner), so customer B and the partner without consent probe someone else's data.
ROUTES: dict[tuple[str, str], Access] = {
    # operations and the web page: public
    ("GET", "/health/live"): everyone(),
    ("GET", "/health/ready"): everyone(),
    ("GET", "/metrics"): everyone(),
    ("GET", "/"): everyone(),
    ("GET", "/store"): everyone(),  # store staff's page: its calls need a till key
    ("GET", "/static/{file_path:path}"): everyone(),
    ("POST", "/dev/demo-session"): everyone(),  # development only (see the production test)
    ("GET", "/.well-known/jwks.json"): everyone(),  # the keys that verify signed receipts
    # the customer's own data: customers only, and only their own
    ("POST", "/v1/me"): customers(200, 200),
    ("GET", "/v1/me"): customers(200, 200),
    ("PATCH", "/v1/me"): customers(200, 200),
    ("DELETE", "/v1/me"): customers(204, 204),
    ("GET", "/v1/me/preferences"): customers(200, 200),
    ("POST", "/v1/me/preferences"): customers(201, 201),
    ("GET", "/v1/me/preferences/{preference_id:uuid}"): customers(200, 404),
    ("PATCH", "/v1/me/preferences/{preference_id:uuid}"): customers(200, 404),
    ("DELETE", "/v1/me/preferences/{preference_id:uuid}"): customers(204, 404),
    ("POST", "/v1/me/preferences/{preference_id:uuid}/reorders"): customers(201, 404),
    ("GET", "/v1/me/consents"): customers(200, 200),
    ("GET", "/v1/me/consents/history"): customers(200, 200),
    ("GET", "/v1/me/consents/receipts/{receipt_id:uuid}"): customers(200, 404),
    ("PUT", "/v1/me/consents/{audience:str}"): customers(200, 200),
    ("DELETE", "/v1/me/consents/{audience:str}"): customers(200, 200),
    ("POST", "/v1/me/checkout-codes"): customers(201, 201),
    ("DELETE", "/v1/me/checkout-codes/{code_id:uuid}"): customers(204, 404),
    ("GET", "/v1/me/access-log"): customers(200, 200),
    ("GET", "/v1/me/reorders"): customers(200, 200),
    ("POST", "/v1/me/reorders/{reorder_id:uuid}/cancel"): customers(200, 404),
    ("POST", "/v1/me/reorders/{reorder_id:uuid}/confirm"): customers(200, 404),
    ("GET", "/v1/me/export"): customers(200, 200),
    ("GET", "/v1/partners"): customers(200, 200),
    ("GET", "/v1/stores"): customers(200, 200),
    # the till: live pos keys only (a revoked key is refused)
    ("POST", "/v1/pos/lookup"): Access({TILL: 200}),
    ("POST", "/v1/pos/cards/confirm"): Access({TILL: 204}),
    ("POST", "/v1/pos/purchases"): Access({TILL: 200}),
    # the store's queue: the matrix's till is at another store than A's reorder (404: not its own)
    ("GET", "/v1/pos/reorders"): Access({TILL: 200}),
    ("POST", "/v1/pos/reorders/{reorder_id:uuid}/status"): Access({TILL: 404}),
    # partners: partner keys only; without the customer's consent a customer-specific route is 404
    ("GET", "/v1/partner/reorders"): partners(200, 200),
    ("POST", "/v1/partner/reorders"): partners(201, 404),
    ("POST", "/v1/partner/reorders/{reorder_id:uuid}/status"): partners(200, 404),
    ("GET", "/v1/partner/customers/{ref:str}/preferences"): partners(200, 404),
    # the catalogue (public product facts): anyone the service knows but insights keys; the
    # product probed is not in the catalogue, so the allowed get 404 after the guard let them in
    ("GET", "/v1/catalogue/products"): Access(
        {TILL: 200, PARTNER: 200, OTHER_PARTNER: 200, CUSTOMER_A: 200, CUSTOMER_B: 200}
    ),
    ("GET", "/v1/catalogue/products/{sku:str}"): Access(
        {TILL: 404, PARTNER: 404, OTHER_PARTNER: 404, CUSTOMER_A: 404, CUSTOMER_B: 404}
    ),
    # merchandising: insights keys only
    ("GET", "/v1/insights/discontinued-demand"): Access({INSIGHTS: 200}),
}

# Requests that change what later rows rely on run last, in this order.
LAST = (
    ("POST", "/v1/me/reorders/{reorder_id:uuid}/cancel"),
    ("DELETE", "/v1/me/consents/{audience:str}"),
    ("DELETE", "/v1/me/preferences/{preference_id:uuid}"),
    ("DELETE", "/v1/me/checkout-codes/{code_id:uuid}"),
    ("DELETE", "/v1/me"),
)


def served_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, path template) the app answers, without OPTIONS/HEAD and the OpenAPI pages."""
    app = create_app(settings)
    served = set()
    for route in app.routes:
        assert isinstance(route, HTTPRoute), (
            f"{route.path} is not an HTTP route: add it to the matrix"
        )
        if route.path == "/schema" or route.path.startswith("/schema/"):
            continue
        served |= {
            (method, route.path) for method in route.methods if method not in ("OPTIONS", "HEAD")
        }
    return served


def test_every_route_the_app_serves_has_an_entry_in_the_authorization_table(settings):
    served = served_routes(settings)
    missing = sorted(served - ROUTES.keys())
    stale = sorted(ROUTES.keys() - served)
    assert not missing, f"routes without an authorization rule (add them to ROUTES): {missing}"
    assert not stale, f"rules for routes the app no longer serves (remove them): {stale}"
    assert set(LAST) <= ROUTES.keys()


def test_the_demo_sign_in_does_not_exist_in_production(settings, tmp_path):
    jwks = tmp_path / "jwks.json"
    public = DevIssuer(settings.dev_issuer_key_path).public_jwk
    jwks.write_text(json.dumps({"keys": [public]}))
    production = load(
        {
            "PREFS_ENV": "production",
            "PREFS_DATA_DIR": str(tmp_path / "data"),
            "PREFS_DATABASE_URL": settings.database_url or "",
            "PREFS_MASTER_KEYS": settings.master_keys,
            "PREFS_INDEX_KEY": settings.index_keys,
            "PREFS_JWT_ISSUER": "https://id.example-retailer.test/",
            "PREFS_JWT_AUDIENCE": "prefs-api",
            "PREFS_JWT_JWKS": str(jwks),
            "PREFS_OIDC_CLIENT_ID": "prefs-page",
            "PREFS_RECEIPT_KEYS": settings.receipt_keys,
        }
    )
    paths = {path for _, path in served_routes(production)}
    assert not any(path.startswith("/dev/") for path in paths), paths
    assert paths == {path for _, path in ROUTES} - {"/dev/demo-session"}


def fresh_card() -> str:
    return f"{secrets.randbelow(10**15) + 10**15}"


@dataclass
class World:
    """Customer A (with everything an id can point at), customer B, and every kind of key."""

    headers: dict[str, dict[str, str]]
    card_a: str
    preference_a: str
    reorder_a: str  # a store reorder A can cancel
    partner_reorder_a: str  # addressed to the consenting partner
    ref_a: str  # A's pairwise reference as the consenting partner knows it
    partner_preference_a: str  # A's preference as the consenting partner knows it
    code_a: dict[str, Any]  # a checkout code of A's (its id and the code)
    receipt_a: str  # the receipt of one of A's consents


async def build_world(client: httpx.AsyncClient, conn: Any, new_customer: Any) -> World:
    card_a = fresh_card()
    a = await new_customer(card=card_a)
    b = await new_customer()
    _, till = await credentials.create(conn, "pos", "Till 3", store=await in_directory(conn))
    revoked_cred, revoked = await credentials.create(
        conn, "pos", "Till 4", store=await in_directory(conn)
    )
    await credentials.revoke(conn, revoked_cred.id)
    partner_cred, partner = await credentials.create(
        conn, "partner", f"Tailor {uuid.uuid4().hex[:8]}"
    )
    _, other_partner = await credentials.create(conn, "partner", f"Cobbler {uuid.uuid4().hex[:8]}")
    _, insights = await credentials.create(conn, "insights", f"Merch {uuid.uuid4().hex[:8]}")

    async def ok(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    preference = await ok(
        await client.post("/v1/me/preferences", headers=a.headers, json=CHINOS), 201
    )
    await ok(await client.post("/v1/me/preferences", headers=b.headers, json=CHINOS), 201)
    everything = {"fields": ["product", "attributes", "note"]}
    audience = f"partner:{partner_cred.partner_id}"
    for customer, audiences in ((a, ("pos", "insights", audience)), (b, ("insights",))):
        for name in audiences:
            await ok(
                await client.put(
                    f"/v1/me/consents/{name}", headers=customer.headers, json=everything
                ),
                200,
            )
    purchases = await ok(
        await client.put("/v1/me/consents/purchases", headers=a.headers, json={}), 200
    )
    consents = await ok(await client.get("/v1/me/consents", headers=a.headers), 200)
    [ref] = [c["reference"] for c in consents["items"] if c["audience"] == audience]
    [known] = (
        await ok(
            await client.get(f"/v1/partner/customers/{ref}/preferences", headers=bearer(partner)),
            200,
        )
    )["items"]
    reorders = []
    for fulfiller in (FROM_HIGH_STREET, audience):
        reorders.append(
            await ok(
                await client.post(
                    f"/v1/me/preferences/{preference['id']}/reorders",
                    headers={**a.headers, "Idempotency-Key": str(uuid.uuid4())},
                    json={"quantity": 1, "fulfiller": fulfiller},
                ),
                201,
            )
        )
    return World(
        headers={
            ANONYMOUS: {},
            CUSTOMER_A: a.headers,
            CUSTOMER_B: b.headers,
            TILL: bearer(till),
            REVOKED_TILL: bearer(revoked),
            PARTNER: bearer(partner),
            OTHER_PARTNER: bearer(other_partner),
            INSIGHTS: bearer(insights),
        },
        card_a=card_a,
        preference_a=preference["id"],
        reorder_a=reorders[0]["id"],
        partner_reorder_a=reorders[1]["id"],
        ref_a=ref,
        partner_preference_a=known["id"],
        code_a=await ok(
            await client.post("/v1/me/checkout-codes", headers=a.headers, json=everything), 201
        ),
        receipt_a=purchases["receipt"]["receipt_id"],
    )


def request_for(world: World, method: str, template: str, principal: str) -> dict[str, Any]:
    """A well-formed request for this route, as httpx.request keyword arguments."""
    path = (
        template.replace("{preference_id:uuid}", world.preference_a)
        .replace("{audience:str}", "insights")
        .replace("{file_path:path}", "app.css")
        .replace("{ref:str}", world.ref_a)
        .replace("{sku:str}", "MATRIX-NOT-IN-THE-CATALOGUE")
    )
    if "{reorder_id:uuid}" in template:
        reorder = (
            world.partner_reorder_a if template.startswith("/v1/partner/") else world.reorder_a
        )
        path = path.replace("{reorder_id:uuid}", reorder)
    path = path.replace("{code_id:uuid}", world.code_a["id"])
    path = path.replace("{receipt_id:uuid}", world.receipt_a)
    assert "{" not in path, f"no value for a path parameter of {template}: teach request_for"
    headers = dict(world.headers[principal])
    body: Any = None
    match (method, template):
        case ("PATCH", "/v1/me"):
            body = {"card": world.card_a if principal == CUSTOMER_A else fresh_card()}
        case ("POST", "/v1/me/preferences"):
            body = CHINOS
        case ("PATCH", "/v1/me/preferences/{preference_id:uuid}"):
            body = {"note": "Still the old cut."}
            headers["If-Match"] = "*"
        case ("DELETE", "/v1/me/preferences/{preference_id:uuid}"):
            headers["If-Match"] = "*"
        case ("POST", "/v1/me/preferences/{preference_id:uuid}/reorders"):
            body = {"quantity": 1, "fulfiller": FROM_HIGH_STREET}
            headers["Idempotency-Key"] = str(uuid.uuid4())
        case ("PUT", "/v1/me/consents/{audience:str}") | ("POST", "/v1/me/checkout-codes"):
            body = {"fields": ["product"]}
        case ("POST", "/v1/pos/lookup"):
            body = {"card": world.card_a}
        case ("POST", "/v1/pos/cards/confirm"):
            body = {"card": world.card_a, "code": world.code_a["code"]}
        case ("POST", "/v1/pos/purchases"):
            body = {"card": world.card_a, "items": [{"sku": "MATRIX-BOUGHT", "quantity": 1}]}
            headers["Idempotency-Key"] = str(uuid.uuid4())
        case ("POST", "/v1/partner/reorders"):
            body = {
                "customer": world.ref_a,
                "preference": world.partner_preference_a,
                "quantity": 1,
            }
            headers["Idempotency-Key"] = str(uuid.uuid4())
        case ("POST", "/v1/partner/reorders/{reorder_id:uuid}/status") | (
            "POST",
            "/v1/pos/reorders/{reorder_id:uuid}/status",
        ):
            body = {"state": "accepted"}
    request: dict[str, Any] = {"method": method, "url": path, "headers": headers}
    if body is not None:
        request["json"] = body
    return request


def refused_properly(response: httpx.Response) -> bool:
    return response.status_code in (401, 403) and response.headers.get(
        "content-type", ""
    ).startswith(PROBLEM_JSON)


async def test_each_principal_reaches_exactly_the_routes_allowed_to_it(
    client, conn, new_customer, settings
):
    assert settings.dev_issuer, "the matrix runs in development, where the demo sign-in exists"
    world = await build_world(client, conn, new_customer)
    routes = sorted(ROUTES, key=lambda route: LAST.index(route) + 1 if route in LAST else 0)
    wrong = []
    for method, template in routes:
        access = ROUTES[(method, template)]
        for principal in PRINCIPALS:
            response = await client.request(**request_for(world, method, template, principal))
            if principal in access.allowed:
                expected = access.statuses[principal]
                if response.status_code != expected:
                    wrong.append(
                        f"{method} {template} as {principal}: expected {expected}, "
                        f"got {response.status_code} {response.text[:200]}"
                    )
            elif not refused_properly(response):
                wrong.append(
                    f"{method} {template} as {principal}: expected a 401/403 problem, "
                    f"got {response.status_code} {response.headers.get('content-type')} "
                    f"{response.text[:200]}"
                )
    assert not wrong, "\n".join(["the authorization matrix does not hold:", *wrong])


def same_answer(left: httpx.Response, right: httpx.Response) -> bool:
    return (left.status_code, left.headers.get("content-type"), left.json()) == (
        right.status_code,
        right.headers.get("content-type"),
        right.json(),
    )


async def test_another_customers_ids_answer_exactly_like_ids_that_do_not_exist(
    client, new_customer
):
    a, b = await new_customer(), await new_customer()
    created = await client.post("/v1/me/preferences", headers=a.headers, json=CHINOS)
    preference = created.json()["id"]
    reordered = await client.post(
        f"/v1/me/preferences/{preference}/reorders",
        headers={**a.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )
    assert reordered.status_code == 201, reordered.text
    reorder = reordered.json()["id"]
    probes = [
        ("GET", "/v1/me/preferences/{}", preference, {}, None),
        ("PATCH", "/v1/me/preferences/{}", preference, {"If-Match": "*"}, {"note": "mine now"}),
        ("PATCH", "/v1/me/preferences/{}", preference, {"If-Match": '"1"'}, {"note": "mine now"}),
        ("DELETE", "/v1/me/preferences/{}", preference, {"If-Match": "*"}, None),
        ("DELETE", "/v1/me/preferences/{}", preference, {"If-Match": '"1"'}, None),
        (
            "POST",
            "/v1/me/preferences/{}/reorders",
            preference,
            {},
            {"quantity": 1, "fulfiller": FROM_HIGH_STREET},
        ),
        ("POST", "/v1/me/reorders/{}/cancel", reorder, {}, None),
    ]
    for method, template, real_id, extra, body in probes:
        answers = []
        for target in (real_id, str(uuid.uuid4())):
            headers = {**b.headers, **extra}
            if template.endswith("/reorders"):
                headers["Idempotency-Key"] = str(uuid.uuid4())
            answers.append(
                await client.request(method, template.format(target), headers=headers, json=body)
            )
        theirs, unknown = answers
        assert theirs.status_code == 404, (method, template, theirs.text)
        assert theirs.headers["content-type"].startswith(PROBLEM_JSON)
        assert same_answer(theirs, unknown), (method, template, theirs.text, unknown.text)

    # and nothing of A's changed
    mine = await client.get(f"/v1/me/preferences/{preference}", headers=a.headers)
    assert mine.status_code == 200
    assert mine.json() == created.json()
    listed = await client.get("/v1/me/reorders", headers=a.headers)
    assert [(r["id"], r["state"]) for r in listed.json()["items"]] == [(reorder, "requested")]


async def test_a_partner_without_consent_cannot_tell_a_real_customer_from_a_made_up_one(
    client, conn, new_customer
):
    customer = await new_customer()
    created = await client.post("/v1/me/preferences", headers=customer.headers, json=CHINOS)
    preference = created.json()["id"]
    consenting, _ = await credentials.create(conn, "partner", f"Tailor {uuid.uuid4().hex[:8]}")
    _, stranger = await credentials.create(conn, "partner", f"Cobbler {uuid.uuid4().hex[:8]}")
    audience = f"partner:{consenting.partner_id}"
    granted = await client.put(
        f"/v1/me/consents/{audience}", headers=customer.headers, json={"fields": ["product"]}
    )
    assert granted.status_code == 200, granted.text
    consents = await client.get("/v1/me/consents", headers=customer.headers)
    [ref] = [c["reference"] for c in consents.json()["items"] if c["audience"] == audience]
    reordered = await client.post(
        f"/v1/me/preferences/{preference}/reorders",
        headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": audience},
    )
    assert reordered.status_code == 201, reordered.text
    made_up_ref = secrets.token_urlsafe(len(ref))[: len(ref)]
    pairs = [
        (
            ("GET", f"/v1/partner/customers/{ref}/preferences", None),
            ("GET", f"/v1/partner/customers/{made_up_ref}/preferences", None),
        ),
        (
            (
                "POST",
                f"/v1/partner/reorders/{reordered.json()['id']}/status",
                {"state": "accepted"},
            ),
            ("POST", f"/v1/partner/reorders/{uuid.uuid4()}/status", {"state": "accepted"}),
        ),
        (
            (
                "POST",
                "/v1/partner/reorders",
                {"customer": ref, "preference": preference, "quantity": 1},
            ),
            (
                "POST",
                "/v1/partner/reorders",
                {"customer": made_up_ref, "preference": preference, "quantity": 1},
            ),
        ),
    ]
    for real, made_up in pairs:
        answers = []
        for method, path, body in (real, made_up):
            headers = {**bearer(stranger), "Idempotency-Key": str(uuid.uuid4())}
            answers.append(await client.request(method, path, headers=headers, json=body))
        theirs, unknown = answers
        assert theirs.status_code == 404, (real, theirs.text)
        assert same_answer(theirs, unknown), (real, theirs.text, unknown.text)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Basic", "Token", ""])
async def test_api_keys_never_open_customer_routes_and_tokens_never_open_key_routes(
    client, conn, new_customer, scheme
):
    customer = await new_customer()
    token = customer.headers["Authorization"].split(" ", 1)[1]
    _, till = await credentials.create(conn, "pos", "Till 9", store=await in_directory(conn))
    for credential, path, method in (
        (till, "/v1/me", "GET"),
        (token, "/v1/pos/lookup", "POST"),
        (token, "/v1/partner/reorders", "GET"),
        (token, "/v1/insights/discontinued-demand", "GET"),
    ):
        header = f"{scheme} {credential}".strip()
        response = await client.request(
            method,
            path,
            headers={"Authorization": header},
            json={"card": "600123456789"} if method == "POST" else None,
        )
        assert refused_properly(response), (scheme, path, response.status_code, response.text)


# -- linkage: no identifier shown to one recipient is shown to another -------------------------

IDENTIFYING_KEYS = {"id", "preference_id", "customer", "disclosure_id", "reference"}


def identifiers(answer: Any) -> set[str]:
    """Every value an answer carries under a key that names something (ids and references)."""
    found: set[str] = set()
    if isinstance(answer, dict):
        for key, value in answer.items():
            if key in IDENTIFYING_KEYS and isinstance(value, str):
                found.add(value)
            found |= identifiers(value)
    elif isinstance(answer, list):
        for value in answer:
            found |= identifiers(value)
    return found


async def partner_sees(
    client: httpx.AsyncClient, key: str, ref: str, feed_items: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A partner's read of the customer's preferences and its feed (polled until complete)."""
    read = await client.get(f"/v1/partner/customers/{ref}/preferences", headers=bearer(key))
    assert read.status_code == 200, read.text
    items: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(200):
        params = {"after": after} if after else {}
        page = await client.get("/v1/partner/reorders", headers=bearer(key), params=params)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        after = page.json()["next"]
        if len(items) >= feed_items:
            break
    assert len(items) == feed_items
    return read.json()["items"], items


async def test_two_partners_and_a_till_cannot_join_on_any_identifier(client, conn, new_customer):
    card = fresh_card()
    customer = await new_customer(card=card)
    created = await client.post("/v1/me/preferences", headers=customer.headers, json=CHINOS)
    mine = created.json()["id"]
    _, till = await credentials.create(conn, "pos", "Till 3", store=await in_directory(conn))
    x, x_key = await credentials.create(conn, "partner", f"Tailor {uuid.uuid4().hex[:8]}")
    y, y_key = await credentials.create(conn, "partner", f"Cobbler {uuid.uuid4().hex[:8]}")
    everything = {"fields": ["product", "attributes", "note"]}
    refs = {}
    for audience in ("pos", f"partner:{x.partner_id}", f"partner:{y.partner_id}"):
        granted = await client.put(
            f"/v1/me/consents/{audience}", headers=customer.headers, json=everything
        )
        assert granted.status_code == 200, granted.text
    consents = (await client.get("/v1/me/consents", headers=customer.headers)).json()["items"]
    refs = {c["audience"]: c["reference"] for c in consents if c["audience"] != "pos"}
    x_ref, y_ref = refs[f"partner:{x.partner_id}"], refs[f"partner:{y.partner_id}"]
    for partner in (x, y):
        placed = await client.post(
            f"/v1/me/preferences/{mine}/reorders",
            headers={**customer.headers, "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": 1, "fulfiller": f"partner:{partner.partner_id}"},
        )
        assert placed.status_code == 201, placed.text

    x_read, x_feed = await partner_sees(client, x_key, x_ref, 1)
    y_read, y_feed = await partner_sees(client, y_key, y_ref, 1)
    [x_preference], [y_preference] = x_read, y_read
    # each partner's preference id is its own, and stable across its reads and its feed
    assert x_feed[0]["preference_id"] == x_preference["id"]
    assert y_feed[0]["preference_id"] == y_preference["id"]
    assert (await partner_sees(client, x_key, x_ref, 1))[0] == x_read
    x_placed = await client.post(
        "/v1/partner/reorders",
        headers={**bearer(x_key), "Idempotency-Key": str(uuid.uuid4())},
        json={"customer": x_ref, "preference": x_preference["id"], "quantity": 1},
    )
    assert x_placed.status_code == 201, x_placed.text
    assert x_placed.json()["preference_id"] == x_preference["id"]

    looked = await client.post("/v1/pos/lookup", headers=bearer(till), json={"card": card})
    assert looked.status_code == 200, looked.text
    [at_till] = looked.json()["preferences"]
    assert "id" not in at_till  # the till needs no stable identifier

    seen = {
        "x": identifiers([x_read, x_feed, x_placed.json()]),
        "y": identifiers([y_read, y_feed]),
        "till": identifiers(looked.json()),
    }
    for left, right in (("x", "y"), ("x", "till"), ("y", "till")):
        assert not seen[left] & seen[right], (left, right, seen[left] & seen[right])
    for recipient, values in seen.items():
        assert mine not in values, recipient
        assert customer.id not in values, recipient

    # one partner's id means nothing to another: the same 404 as an id that does not exist
    answers = []
    for preference in (x_preference["id"], str(uuid.uuid4()), mine):
        answers.append(
            await client.post(
                "/v1/partner/reorders",
                headers={**bearer(y_key), "Idempotency-Key": str(uuid.uuid4())},
                json={"customer": y_ref, "preference": preference, "quantity": 1},
            )
        )
    assert [answer.status_code for answer in answers] == [404, 404, 404]
    assert answers[0].json() == answers[1].json() == answers[2].json()
