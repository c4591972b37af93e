"""Review of issue 18 (the page): what a customer's longest words do to the page at 360 px."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.test_page_for_customers import (
    bearer,
    go_to,
    grant,
    partner_audience,
    signed_in,
)
from tests.support.browser import CHROMIUM, Service, Watch

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package"
)

# the longest each field takes, in words no line can break between
LONG = {
    "product": {"sku": "S" * 64, "name": "N" * 200, "brand": "B" * 100, "category": "C" * 100},
    "attributes": {"a" * 40: "V" * 200, "colour": "K" * 200},
    "note": "W" * 2000,
    "status": "discontinued",
}
TIMES = "\u00d7"
SIDEWAYS = "document.documentElement.scrollWidth - window.innerWidth"


def test_the_longest_words_a_customer_can_type_never_make_the_page_scroll_sideways(
    service: Service, browser_page: tuple[Any, Watch]
) -> None:
    page, watch = browser_page
    token, [long] = signed_in(page, service, 360, LONG)
    audience = partner_audience(service, token)
    grant(service, token, audience, fields=["product", "attributes", "note"], preferences="all")
    grant(service, token, "pos", fields=["product", "attributes", "note"], preferences=[long["id"]])
    for fulfiller in ("store:0001", audience):
        placed = httpx.post(
            f"{service.url}/v1/me/preferences/{long['id']}/reorders",
            headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": 1, "fulfiller": fulfiller},
        )
        assert placed.status_code == 201, placed.text
    code = httpx.post(f"{service.url}/v1/me/checkout-codes", headers=bearer(token)).json()["code"]
    looked = httpx.post(
        f"{service.url}/v1/pos/lookup", headers=bearer(service.till_key), json={"code": code}
    )
    assert looked.status_code == 200, looked.text
    page.reload()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_visible()

    wide: dict[str, int] = {}
    wide["Preferences"] = page.evaluate(SIDEWAYS)
    page.locator("#preference-list > li").first.get_by_role("button", name="More actions").click()
    wide["Preferences, More open"] = page.evaluate(SIDEWAYS)
    page.keyboard.press("Escape")
    for label in ("Reorders", "Sharing", "At the till", "Who looked", "My data"):
        go_to(page, label)
        page.wait_for_timeout(200)
        wide[label] = page.evaluate(SIDEWAYS)
    go_to(page, "Sharing")
    page.get_by_role("button", name="Stop sharing with Stitch & Co. tailors").click()
    expect(page.locator("#status")).to_contain_text("This also cancelled")
    wide["Sharing, withdrawal said"] = page.evaluate(SIDEWAYS)
    assert wide == dict.fromkeys(wide, 0), wide
    watch.assert_clean(service)


def test_a_withdrawal_names_the_sizes_the_cancelled_reorder_was_for(
    service: Service, browser_page: tuple[Any, Watch]
) -> None:
    """The sharing view said what a withdrawal cancelled with the preference's sizes of today,
    not those the reorder was placed with: a reorder for waist 34, after the waist was changed
    to 36, was announced as cancelled "(36, 32, khaki)"."""
    page, watch = browser_page
    chinos = {
        "product": {"name": "Classic Chino"},
        "attributes": {"waist": "34", "leg": "32", "colour": "khaki"},
    }
    token, [kept] = signed_in(page, service, 1280, chinos)
    audience = partner_audience(service, token)
    grant(service, token, audience, fields=["product", "attributes"], preferences="all")
    url = f"{service.url}/v1/me/preferences/{kept['id']}"
    placed = httpx.post(
        f"{url}/reorders",
        headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": audience},
    )
    assert placed.status_code == 201, placed.text
    changed = httpx.patch(
        url,
        headers={**bearer(token), "If-Match": f'"{kept["version"]}"'},
        json={"attributes": {"waist": "36"}},
    )
    assert changed.status_code == 200, changed.text
    page.reload()
    go_to(page, "Sharing")
    page.get_by_role("button", name="Stop sharing with Stitch & Co. tailors").click()
    status = page.locator("#status")
    expect(status).to_contain_text("This also cancelled the reorder")
    expect(status).to_contain_text(f"1 {TIMES} Classic Chino (34, 32, khaki)")
    watch.assert_clean(service)
