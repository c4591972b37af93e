"""Signing in to the page with the retailer's identity provider: a real OpenID Connect provider
(panva/oidc-provider on the machine's Node, tests/oidc) on 127.0.0.1, `prefs serve` configured
for it, and Debian's Chromium.

The customer signs in (authorization code with PKCE), uses the page, lets their sign-in run out
in the middle of an edit and comes back to it, signs out at the provider too. Tampering with
`state`, the `nonce` or the PKCE verifier is refused; the API refuses the provider's token for
another audience, and its ID token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import prefs_serve
from tests.browser.views import look_at
from tests.support import oidc
from tests.support.browser import CHROMIUM, Service, Watch
from tests.support.servers import free_port

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package"
)

ACCESS_TTL = 75  # seconds the provider's access tokens live
# the page signs in again this long before the token runs out: 30 s, or a third of its life
MARGIN = min(30, ACCESS_TTL / 3)
TOKEN_KEY = "prefs.customer-token"


@pytest.fixture(scope="module")
def provider_and_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Service]]:
    reason = oidc.missing()
    if reason:
        pytest.skip(reason)
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/"
    with oidc.identity_provider(redirect, access_ttl=ACCESS_TTL) as issuer:
        settings = {
            "PREFS_JWT_ISSUER": issuer,
            "PREFS_JWT_AUDIENCE": oidc.AUDIENCE,
            "PREFS_JWT_JWKS": f"{issuer}/jwks",
            "PREFS_OIDC_CLIENT_ID": oidc.CLIENT_ID,
        }
        with prefs_serve(tmp_path_factory.mktemp("prefs-oidc"), port, **settings) as served:
            yield issuer, served


@pytest.fixture(scope="module")
def service(provider_and_service: tuple[str, Service]) -> Service:
    """The page under test (browser_page opens its pages against this one)."""
    return provider_and_service[1]


@pytest.fixture(scope="module")
def issuer(provider_and_service: tuple[str, Service]) -> str:
    return provider_and_service[0]


def only_service_and_provider(watch: Watch, service: Service, issuer: str) -> None:
    elsewhere = [
        url
        for url in watch.requests
        if not url.startswith((f"{service.url}/", f"{issuer}/", "blob:", "data:"))
    ]
    assert not elsewhere, (
        f"the browser asked for something beyond the service and provider: {elsewhere}"
    )
    assert not watch.errors, f"the page reported errors: {watch.errors}"


def log_in_at_provider(page: Any, issuer: str, login: str) -> None:
    """The provider's own (development) login form: any name, any password."""
    expect(page).to_have_url(re.compile(re.escape(f"{issuer}/interaction/")))
    page.locator('input[name="login"]').fill(login)
    page.locator('input[name="password"]').fill("any password")
    page.get_by_role("button", name="Sign-in").click()


def token_claims(page: Any) -> dict[str, Any]:
    token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    assert token, "the page holds no access token"
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


def test_the_page_allows_exactly_the_providers_origin(service: Service, issuer: str) -> None:
    page = httpx.get(f"{service.url}/")
    assert f"connect-src 'self' {issuer};" in page.headers["content-security-policy"]
    assert f'data-oidc-issuer="{issuer}"' in page.text
    assert f'data-oidc-client-id="{oidc.CLIENT_ID}"' in page.text


def test_a_customer_signs_in_with_the_provider_comes_back_to_their_edit_and_signs_out(
    service: Service, issuer: str, browser_page: tuple[Any, Watch]
) -> None:
    page, watch = browser_page
    login = f"shopper-{uuid.uuid4().hex[:8]}"
    page.goto(f"{service.url}/#preferences")
    expect(page.get_by_role("heading", level=1, name="Your preference locker")).to_be_visible()
    look_at(page, "sign-in-with-provider")
    page.get_by_role("button", name="Sign in", exact=True).click()
    log_in_at_provider(page, issuer, login)

    # Back at the page: the code left the address at once, the customer starts their locker.
    expect(page.get_by_role("heading", level=1, name="Start your locker")).to_be_visible()
    assert "code=" not in page.url and "state=" not in page.url
    claims = token_claims(page)
    assert (claims["iss"], claims["aud"], claims["sub"]) == (issuer, oidc.AUDIENCE, login)
    page.get_by_role("button", name="Start my locker").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()
    page.get_by_role("button", name="Add a preference").click()
    form = page.get_by_role("form", name="Add a preference")
    form.get_by_label("Product name").fill("Classic Chino")
    form.get_by_label("Product code (SKU)").fill("SIGN-IN-1")
    form.get_by_role("button", name="Save preference").click()
    expect(page.locator("#preference-list > li")).to_have_count(1)
    look_at(page, "signed-in-with-provider")

    # The customer starts an edit, and their sign-in runs out before they save it.
    page.get_by_role("button", name="Edit Classic Chino").click()
    edit = page.get_by_role("form", name="Edit Classic Chino")
    note = "Typed while my sign-in ran out: keep it."
    edit.get_by_label("Note", exact=True).fill(note)
    first_token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    time.sleep(max(0.0, token_claims(page)["exp"] - MARGIN - time.time()) + 1)
    edit.get_by_role("button", name="Save changes").click()
    # Through the provider (still signed in there: no form) and back to the edit, text and all.
    expect(page.get_by_role("form", name="Edit Classic Chino")).to_be_visible()
    expect(status(page)).to_contain_text("What you were typing is back")
    edit = page.get_by_role("form", name="Edit Classic Chino")
    expect(edit.get_by_label("Note", exact=True)).to_have_value(note)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") != first_token
    edit.get_by_role("button", name="Save changes").click()
    expect(status(page)).to_contain_text("Your changes to Classic Chino are saved.")
    token = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    kept = httpx.get(
        f"{service.url}/v1/me/preferences", headers={"Authorization": f"Bearer {token}"}
    )
    assert [p["note"] for p in kept.json()["items"]] == [note]

    # Signing out ends the session at the provider too: the next sign-in asks for the login.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(re.escape(f"{issuer}/session/end")))
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page.get_by_role("heading", level=1, name="Your preference locker")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    page.get_by_role("button", name="Sign in", exact=True).click()
    log_in_at_provider(page, issuer, login)
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_visible()
    only_service_and_provider(watch, service, issuer)


def status(page: Any) -> Any:
    return page.locator("#status")


def stopped_on_the_way_out(page: Any, service: Service, issuer: str) -> str:
    """Start a sign-in, but hold the page's trip to the provider: the authorization request it
    made (the page keeps its state, nonce and PKCE verifier in this tab meanwhile)."""
    captured: list[str] = []
    auth = re.compile(re.escape(f"{issuer}/auth?"))

    def hold(route: Any) -> None:
        captured.append(route.request.url)
        route.abort("aborted")  # the navigation never commits: the page stays as it is

    page.goto(f"{service.url}/")
    page.route(auth, hold)
    page.get_by_role("button", name="Sign in", exact=True).click()
    deadline = time.monotonic() + 15
    while not captured:
        assert time.monotonic() < deadline, "the page never went to the provider"
        page.wait_for_timeout(50)
    page.unroute(auth)
    return captured[0]


def pending(page: Any, change: dict[str, str]) -> None:
    """Change this tab's sign-in in progress (as another script on the page could)."""
    page.evaluate(
        """(change) => {
            const kept = JSON.parse(sessionStorage.getItem('prefs.oidc-pending'));
            sessionStorage.setItem('prefs.oidc-pending', JSON.stringify({...kept, ...change}));
        }""",
        change,
    )


@pytest.mark.parametrize("tamper", ["state", "nonce", "PKCE verifier"])
def test_a_tampered_sign_in_is_refused(
    service: Service, issuer: str, browser_page: tuple[Any, Watch], tamper: str
) -> None:
    page, _ = browser_page
    asked = stopped_on_the_way_out(page, service, issuer)
    if tamper == "state":  # the provider sends back a state this tab did not make
        asked = re.sub(r"state=[^&]+", "state=" + secrets.token_urlsafe(16), asked)
    elif tamper == "nonce":  # the ID token carries a nonce this tab does not expect
        pending(page, {"nonce": secrets.token_urlsafe(16)})
    else:  # the code is traded with a verifier that does not match its challenge
        pending(page, {"verifier": secrets.token_urlsafe(48)})
    page.goto(asked)
    log_in_at_provider(page, issuer, f"tamper-{uuid.uuid4().hex[:8]}")
    expect(page.locator("#alert")).to_contain_text("Signing in did not work")
    expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    assert "code=" not in page.url


def tokens_from_provider(issuer: str, redirect: str, **extra: str) -> dict[str, Any]:
    """The provider's answer to a sign-in made without a browser (its development login form)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    with httpx.Client(base_url=issuer) as http:
        asked = http.get(
            "/auth",
            params={
                "client_id": oidc.CLIENT_ID,
                "response_type": "code",
                "scope": "openid",
                "redirect_uri": redirect,
                "state": "s",
                "nonce": "n",
                "code_challenge": challenge.decode(),
                "code_challenge_method": "S256",
                **extra,
            },
        )
        form = http.get(asked.headers["location"])
        action = re.search(r'<form[^>]*action="([^"]+)"', form.text)
        assert action is not None, form.text
        answer = http.post(
            action.group(1), data={"prompt": "login", "login": "api-caller", "password": "x"}
        )
        while not answer.headers["location"].startswith(redirect):
            answer = http.get(answer.headers["location"])
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(answer.headers["location"]).query)
        tokens = http.post(
            "/token",
            data={
                "grant_type": "authorization_code",
                "code": code["code"][0],
                "redirect_uri": redirect,
                "client_id": oidc.CLIENT_ID,
                "code_verifier": verifier,
                **extra,
            },
        )
        assert tokens.status_code == 200, tokens.text
        answered: dict[str, Any] = tokens.json()
        return answered


def test_the_api_takes_the_providers_access_token_for_prefs_only(
    service: Service, issuer: str
) -> None:
    mine = tokens_from_provider(issuer, f"{service.url}/")
    me = httpx.post(
        f"{service.url}/v1/me", headers={"Authorization": f"Bearer {mine['access_token']}"}
    )
    assert me.status_code == 201, me.text  # enrolled as the provider's customer
    elsewhere = tokens_from_provider(issuer, f"{service.url}/", resource="urn:another:api")
    for token in (elsewhere["access_token"], mine["id_token"]):
        refused = httpx.get(f"{service.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 401, refused.text


# A link with a token in the fragment (the hand-over) must not get round the checks above.


def attackers_token(service: Service, issuer: str) -> str:
    """The attacker signs in at the provider themselves and enrols: a valid access token."""
    token: str = tokens_from_provider(issuer, f"{service.url}/")["access_token"]
    httpx.post(f"{service.url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    return token


def test_a_link_with_someone_elses_token_does_not_sign_the_page_in(
    service: Service, issuer: str, browser_page: tuple[Any, Watch]
) -> None:
    page, _ = browser_page
    planted = attackers_token(service, issuer)
    page.goto(f"{service.url}/#token={planted}&view=till")
    page.wait_for_timeout(1500)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") != planted, (
        "a link signed the victim in as the attacker, bypassing state and nonce"
    )


def test_a_link_with_someone_elses_token_does_not_replace_the_customers_session(
    service: Service, issuer: str, browser_page: tuple[Any, Watch]
) -> None:
    page, _ = browser_page
    page.goto(f"{service.url}/")
    page.get_by_role("button", name="Sign in", exact=True).click()
    log_in_at_provider(page, issuer, "victim-review17")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    own = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    assert own
    planted = attackers_token(service, issuer)
    page.goto(f"{service.url}/#token={planted}&view=sharing")
    page.reload()
    page.wait_for_timeout(1500)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == own
