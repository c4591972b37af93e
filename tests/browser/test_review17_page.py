"""Review of issue 17, the page: with OIDC sign-in on, a link carrying someone else's access
token in the fragment (#token=…) still signs the page in -- with no state, no nonce -- and
silently replaces the customer's own session (login CSRF around the OIDC checks)."""

from __future__ import annotations

from typing import Any

import httpx
from playwright.sync_api import expect

from tests.browser.test_sign_in import (  # noqa: F401  (fixtures)
    TOKEN_KEY,
    issuer,
    log_in_at_provider,
    provider_and_service,
    service,
    tokens_from_provider,
)
from tests.support.browser import Service, Watch


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
