"""The self-service page in a real browser, against `prefs serve` on its embedded database.

One customer's first minutes, step by step: sign in as the demo customer, add the chinos, edit
them, move them to the top, reorder them, let the till see them, make a checkout code, be looked up
by a till, see that on "Who looked", withdraw, export, erase. Every view is screenshotted at phone
and desktop widths and scanned with axe-core on the way.
"""

from __future__ import annotations

import json
import re
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import expect

from prefs.auth import DevIssuer
from tests.browser.views import WIDTHS, look_at
from tests.support.browser import CHROMIUM, Service, Watch
from tests.support.scanner import Scanned, quiet_zone, scan

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package"
)

TOKEN_KEY = "prefs.customer-token"
TIMES = "\u00d7"  # the multiplication sign, as in "2 x Classic Chino" on the page
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def till_lookup(service: Service, **body: str) -> httpx.Response:
    return httpx.post(f"{service.url}/v1/pos/lookup", headers=bearer(service.till_key), json=body)


# the navigation's short labels, where a section's heading says more
NAV_LABELS = {"My preferences": "Preferences"}


def go_to(page: Any, section: str) -> None:
    """Follow the navigation to the section whose heading is ``section``."""
    label = NAV_LABELS.get(section, section)
    nav = page.get_by_role("navigation", name="Sections")
    nav.get_by_role("link", name=label, exact=True).click()
    expect(page.get_by_role("heading", level=1, name=section)).to_be_focused()


def more_actions(page: Any, name: str) -> Any:
    """Open the "More" menu of the preference card of ``name``; the menu."""
    button = page.get_by_role("button", name=f"More actions for {name}")
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    return page.get_by_role("list", name=f"More actions for {name}")


def preference_card(page: Any, name: str) -> Any:
    return page.locator("#preference-list > li").filter(has=page.locator("h2", has_text=name))


def status(page: Any) -> Any:
    return page.locator("#status")


# --- what a newcomer sees first -----------------------------------------------------------------


def test_the_page_and_its_assets_carry_a_strict_content_security_policy(service: Service) -> None:
    page = httpx.get(f"{service.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline script in the page"
    assert "<style" not in html, "inline style in the page"
    assert " style=" not in html, "inline style in the page"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler in the page"
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page names another origin"
    for path in ("/", "/store", "/static/app.js", "/static/app.css", "/static/till.js"):
        response = httpx.get(f"{service.url}{path}")
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
    assert (
        httpx.get(f"{service.url}/static/app.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )


def test_prefs_serve_prints_the_page_and_demo_keys_that_work(service: Service) -> None:
    output = service.output()
    assert f"web page: {service.url}/" in output
    assert "demo customer:" in output
    kept = service.data_dir / "demo.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert json.loads(kept.read_text())["till_key"] == service.till_key
    # The printed till key is live; the demo customer shares nothing yet, so the card finds nothing.
    assert till_lookup(service, card=service.card).status_code == 404
    feed = httpx.get(f"{service.url}/v1/partner/reorders", headers=bearer(service.partner_key))
    assert feed.status_code == 200
    demo = httpx.post(f"{service.url}/dev/demo-session").json()
    partners = httpx.get(f"{service.url}/v1/partners", headers=bearer(demo["token"])).json()
    assert [p["name"] for p in partners["items"]] == ["Stitch & Co. tailors"]
    assert partners["items"][0]["description"]


def test_a_token_handed_over_in_the_fragment_signs_in_and_leaves_no_trace_in_the_address(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(
        f"handed-{uuid.uuid4()}@example.test"
    )
    page.goto(f"{service.url}/#token={token}&view=sharing")
    expect(page.get_by_role("heading", level=1, name="Start your locker")).to_be_visible()
    assert token not in page.url
    assert "token" not in page.url
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == token
    # The entry the token arrived in was replaced: back is the blank tab, forward is clean.
    page.go_back()
    assert page.url == "about:blank"
    page.go_forward()
    assert "token" not in page.url
    look_at(page, "start-locker")
    page.get_by_role("button", name="Start my locker").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()
    expect(page.get_by_text("You keep no preferences yet.")).to_be_visible()
    # A reload keeps the customer signed in (this tab's session storage), the address still clean.
    page.reload()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1, name="Your preference locker")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    watch.assert_clean(service)
    assert token not in service.output()


def test_a_new_card_waits_until_it_is_confirmed_at_a_till(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(f"card-{uuid.uuid4()}@example.test")
    card = f"60{uuid.uuid4().int % 10**14:014d}"
    page.goto(f"{service.url}/#token={token}")
    page.get_by_label("Loyalty card number (optional)").fill(card)
    page.get_by_role("button", name="Start my locker").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()

    go_to(page, "My data")
    pending = page.locator("#card-status")
    expect(pending).to_have_attribute("data-status", "pending")
    expect(pending).to_contain_text(
        "show your checkout code at the till while your card is scanned"
    )
    look_at(page, "card-pending")

    # At the till: the customer shows a code while the cashier scans the card.
    go_to(page, "At the till")
    page.get_by_role("button", name="Make a checkout code").click()
    shown = page.locator("section[data-code]")
    code = shown.get_attribute("data-code")
    assert code
    expect(page.locator("#confirm-card-hint")).to_contain_text("while your card is scanned")
    confirmed = httpx.post(
        f"{service.url}/v1/pos/cards/confirm",
        headers=bearer(service.till_key),
        json={"card": card, "code": code},
    )
    assert confirmed.status_code == 204, confirmed.text
    page.get_by_role("button", name="End this code").click()
    expect(status(page)).to_contain_text("Your checkout code is ended.")
    expect(page.locator("#code-countdown")).to_have_text(
        "Ended. No till can use this code any more."
    )
    assert till_lookup(service, code=code).status_code == 404

    go_to(page, "My data")
    expect(page.locator("#card-status")).to_have_attribute("data-status", "confirmed")
    expect(page.locator("#card-status")).to_contain_text("tills can find you by this card")
    look_at(page, "card-confirmed")
    watch.assert_clean(service)


# --- the journey --------------------------------------------------------------------------------


def sign_in_as_demo(page: Any, service: Service) -> str:
    page.goto(f"{service.url}/")
    expect(page.get_by_role("heading", level=1, name="Your preference locker")).to_be_visible()
    look_at(page, "sign-in")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    page.get_by_role("button", name="Sign in as a demo customer").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()
    token: str = page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')")
    assert token
    assert token not in page.url
    return token


def delete_the_demo_chinos(page: Any) -> None:
    chinos = preference_card(page, "Classic Chino")
    expect(chinos).to_contain_text("Discontinued")
    expect(chinos).to_contain_text("Waist: 34")
    more_actions(page, "Classic Chino").get_by_role("button", name="Delete Classic Chino").click()
    dialog = page.get_by_role("dialog", name="Delete Classic Chino?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Keep it")).to_be_focused()
    look_at(page, "delete-confirmation")
    dialog.get_by_role("button", name="Delete", exact=True).click()
    expect(status(page)).to_contain_text("Classic Chino is deleted.")
    expect(preference_card(page, "Classic Chino")).to_have_count(0)


def add_the_chinos(page: Any) -> str:
    page.get_by_role("button", name="Add a preference").click()
    form = page.get_by_role("form", name="Add a preference")
    form.get_by_role("button", name="Save preference").click()
    expect(page.locator("#alert")).to_contain_text("Enter the product's name.")
    expect(form.get_by_label("Product name")).to_have_attribute("aria-invalid", "true")
    form.get_by_label("Product name").fill("Classic Chino")
    expect(form.get_by_label("Product name")).not_to_have_attribute("aria-invalid", "true")
    form.get_by_label("Product code (SKU)").fill("CL-CHINO-3434")
    form.get_by_label("Brand").fill("Acme")
    form.get_by_label("Category").fill("trousers")
    form.get_by_label("Waist", exact=True).fill("34")
    form.get_by_label("Leg", exact=True).fill("34")
    form.get_by_label("Colour", exact=True).fill("khaki")
    form.get_by_label("Fit", exact=True).fill("regular")
    form.get_by_role("button", name="Add another detail").click()
    form.get_by_label("Detail", exact=True).fill("Fabric")
    form.get_by_label("Value", exact=True).fill("cotton twill")
    form.get_by_label("Note").fill("The old cut.")
    form.get_by_label("The shop no longer sells it (discontinued)").check()
    look_at(page, "add-preference")
    form.get_by_role("button", name="Save preference").click()
    expect(status(page)).to_contain_text("Classic Chino is added to your preferences.")
    chinos = preference_card(page, "Classic Chino")
    for shown in (
        "Discontinued",
        "Waist: 34",
        "Leg: 34",
        "Colour: khaki",
        "Fit: regular",
        "Fabric: cotton twill",
        "The old cut.",
    ):
        expect(chinos).to_contain_text(shown)
    return chinos.get_attribute("id").removeprefix("preference-")


def edit_the_chinos(page: Any) -> None:
    page.get_by_role("button", name="Edit Classic Chino").click()
    form = page.get_by_role("form", name="Edit Classic Chino")
    expect(form.get_by_label("Waist", exact=True)).to_have_value("34")
    form.get_by_label("Note").fill("The old cut, before they changed the pockets.")
    form.get_by_role("button", name="Save changes").click()
    expect(status(page)).to_contain_text("Your changes to Classic Chino are saved.")
    expect(preference_card(page, "Classic Chino")).to_contain_text(
        "before they changed the pockets"
    )


def an_edit_elsewhere_is_not_overwritten(
    page: Any, service: Service, token: str, chinos: str
) -> None:
    page.get_by_role("button", name="Edit Classic Chino").click()
    form = page.get_by_role("form", name="Edit Classic Chino")
    # Meanwhile, another tab changes the note.
    url = f"{service.url}/v1/me/preferences/{chinos}"
    etag = httpx.get(url, headers=bearer(token)).headers["etag"]
    elsewhere = httpx.patch(
        url, headers={**bearer(token), "If-Match": etag}, json={"note": "Changed on my phone."}
    )
    assert elsewhere.status_code == 200
    form.get_by_label("Note").fill("Changed in this tab.")
    form.get_by_role("button", name="Save changes").click()
    expect(page.locator("#alert")).to_contain_text(
        "Not saved: Classic Chino was changed elsewhere."
    )
    conflict = page.get_by_role("group", name="Not saved: this preference changed elsewhere")
    expect(conflict).to_contain_text("Changed on my phone.")
    expect(conflict.get_by_role("heading", name="Not saved")).to_be_focused()
    look_at(page, "edit-conflict")
    assert httpx.get(url, headers=bearer(token)).json()["note"] == "Changed on my phone."
    conflict.get_by_role("button", name="Edit the current version").click()
    form = page.get_by_role("form", name="Edit Classic Chino")
    expect(form.get_by_label("Note")).to_have_value("Changed on my phone.")
    form.get_by_label("Note").fill("The old cut, before they changed the pockets.")
    form.get_by_role("button", name="Save changes").click()
    expect(status(page)).to_contain_text("Your changes to Classic Chino are saved.")


def move_the_chinos_to_the_top_by_keyboard(
    page: Any, service: Service, token: str, chinos: str
) -> None:
    more_actions(page, "Classic Chino")
    up = page.locator(f"#up-{chinos}")
    up.focus()
    for position in (3, 2, 1):
        page.keyboard.press("Enter")
        expect(status(page)).to_contain_text(
            f"Classic Chino moved up, to position {position} of 4."
        )
    expect(page.locator(f"#up-{chinos}")).to_be_disabled()
    expect(page.locator(f"#down-{chinos}")).to_be_focused()
    expect(page.locator("#preference-list > li").first).to_contain_text("Classic Chino")
    ranked = httpx.get(f"{service.url}/v1/me/preferences", headers=bearer(token)).json()["items"]
    assert ranked[0]["product"]["name"] == "Classic Chino"
    look_at(page, "preferences")


A_STORE = "A store (I collect it there)"


def reorder_the_chinos(
    page: Any,
    *,
    source: str,
    quantity: int,
    store: tuple[str, str] | None = None,
    note: bool = False,
) -> None:
    """Reorder from ``source``; from a store, find it by ``store`` = (words typed, its name)."""
    page.get_by_role("button", name="Reorder Classic Chino").click()
    form = page.get_by_role("form", name="Reorder Classic Chino")
    form.get_by_label("From").select_option(label=source)
    form.get_by_label("How many").fill(str(quantity))
    if store is not None:
        words, name = store
        form.get_by_role("button", name="Place reorder").click()  # no store chosen yet
        expect(page.locator("#alert")).to_contain_text("Choose the store you will collect it from.")
        form.get_by_label("Find a store").fill(words)
        form.get_by_role("radio", name=re.compile(name)).check()
        if note:
            form.get_by_label("Let the store read my note").check()
    form.get_by_role("button", name="Place reorder").click()
    expect(status(page)).to_contain_text(f"Reorder placed: {quantity} {TIMES} Classic Chino from")


def store_queue(service: Service) -> list[dict[str, Any]]:
    """Everything in the demo till's store queue, as the till reads it."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = httpx.get(
            f"{service.url}/v1/pos/reorders",
            headers=bearer(service.till_key),
            params={"after": after} if after else {},
        ).json()
        items += page["items"]
        if not page["items"]:
            return items
        after = page["next"]


def store_moves(service: Service, reorder_id: str, state: str) -> None:
    response = httpx.post(
        f"{service.url}/v1/pos/reorders/{reorder_id}/status",
        headers=bearer(service.till_key),
        json={"state": state},
    )
    assert response.status_code == 200, response.text


def share(page: Any, audience: str, who: str) -> Any:
    section = page.locator(f'section[data-audience="{audience}"]')
    section.get_by_role("button", name=f"Share with {who}…").click()
    section.get_by_role("button", name="Share", exact=True).click()
    expect(status(page)).to_contain_text("Saved:")
    section = page.locator(f'section[data-audience="{audience}"]')
    expect(section).to_contain_text(
        "Shared: the products and your sizes and details in all your preferences"
    )
    return section


def test_a_customer_keeps_shares_reorders_and_erases_their_locker(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = sign_in_as_demo(page, service)
    expect(page.locator("#preference-list > li")).to_have_count(4)

    delete_the_demo_chinos(page)
    chinos = add_the_chinos(page)
    edit_the_chinos(page)
    an_edit_elsewhere_is_not_overwritten(page, service, token, chinos)
    move_the_chinos_to_the_top_by_keyboard(page, service, token, chinos)

    # Reorder from a store found by its street, then think better of it.
    reorder_the_chinos(page, source=A_STORE, quantity=2, store=("king street", "Covent Garden"))
    go_to(page, "Reorders")
    store_order = page.locator("#reorder-list > li").filter(has_text=f"2 {TIMES} Classic Chino")
    expect(store_order).to_contain_text("Requested")
    expect(store_order).to_contain_text("From Covent Garden")
    page.get_by_role("button", name=f"Cancel this reorder of 2 {TIMES} Classic Chino").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel the reorder").click()
    expect(status(page)).to_contain_text("The reorder of Classic Chino is cancelled.")
    expect(store_order).to_contain_text("Cancelled")

    # Let the tailors see the chinos, and reorder through them: the partner's feed has it.
    go_to(page, "Sharing")
    share(page, f"partner:{_partner_id(service, token)}", "Stitch & Co. tailors")
    go_to(page, "My preferences")
    reorder_the_chinos(page, source="Stitch & Co. tailors", quantity=1)
    feed = httpx.get(
        f"{service.url}/v1/partner/reorders", headers=bearer(service.partner_key)
    ).json()
    assert [(r["quantity"], r["state"], r["item"]["product"]["name"]) for r in feed["items"]] == [
        (1, "requested", "Classic Chino")
    ]
    go_to(page, "Reorders")
    tailored = page.locator("#reorder-list > li").filter(has_text=f"1 {TIMES} Classic Chino")
    expect(tailored).to_contain_text("From Stitch & Co. tailors")

    # Reorder from the demo till's own store: the store accepts it and has it ready to collect.
    go_to(page, "My preferences")
    reorder_the_chinos(
        page, source=A_STORE, quantity=3, store=("oxford", "Oxford Street"), note=True
    )
    [queued] = [r for r in store_queue(service) if r["quantity"] == 3]
    assert (queued["state"], queued["item"]["product"]["name"]) == ("requested", "Classic Chino")
    assert queued["fields"] == ["product", "attributes", "note"] and queued["item"]["note"]
    # the reorder from Covent Garden is that store's, not in this one's queue
    assert not [r for r in store_queue(service) if r["quantity"] == 2]
    go_to(page, "Reorders")
    collect = page.locator("#reorder-list > li").filter(has_text=f"3 {TIMES} Classic Chino")
    expect(collect).to_contain_text("Requested")
    store_moves(service, queued["id"], "accepted")
    go_to(page, "My preferences")
    go_to(page, "Reorders")
    expect(collect).to_contain_text("Accepted")
    expect(collect.get_by_role("button", name=re.compile("Cancel this reorder"))).to_have_count(0)
    store_moves(service, queued["id"], "ready")
    go_to(page, "My preferences")
    go_to(page, "Reorders")
    number = queued["id"][:8].upper()
    expect(collect).to_contain_text("Ready to collect")
    expect(collect).to_contain_text(f"show order number {number} at the till")
    look_at(page, "reorders")
    store_moves(service, queued["id"], "collected")

    # Let tills see the preferences: the card now finds them.
    go_to(page, "Sharing")
    till = share(page, "pos", "the store tills")
    expect(till.get_by_text("Shared", exact=True)).to_be_visible()
    assert till_lookup(service, card=service.card).status_code == 200
    history = page.locator("#consent-history")
    expect(history.locator("li").first).to_contain_text(
        "You let Store tills at checkout see the products and your sizes and details"
        " in all your preferences"
    )
    history.locator("li").first.get_by_text("Show the receipt").click()
    history.locator("li").first.get_by_text("Technical details").click()
    expect(history.locator("li").first).to_contain_text("ServicePersonalisation")
    look_at(page, "sharing")

    # A checkout code, shown large and as a QR code, looked up by the demo till.
    go_to(page, "At the till")
    page.get_by_role("button", name="Make a checkout code").click()
    shown = page.locator("section[data-code]")
    expect(shown.get_by_role("heading", name="Show this at the till")).to_be_focused()
    code = shown.get_attribute("data-code")
    assert code
    assert re.fullmatch(r"[23456789A-Z]{8}", code)
    expect(shown.locator(".checkout-code")).to_contain_text(f"{code[:4]} {code[4:]}")
    qr = shown.get_by_role("img", name=f"QR code of your checkout code {code[:4]} {code[4:]}")
    expect(qr).to_be_visible()
    # The QR code as the customer's screen shows it reads, with its quiet zone, as the code.
    for width, height in WIDTHS.values():
        page.set_viewport_size({"width": width, "height": height})
        seen = qr.screenshot()
        assert scan(seen) == [Scanned(code, "QRCode", 1)], width
        assert quiet_zone(seen, modules=21) == 4, width
    expect(page.locator("#code-countdown")).to_have_text(re.compile(r"Works for [0-5]:[0-5][0-9]"))
    look_at(page, "till")
    lookup = till_lookup(service, code=code)
    assert lookup.status_code == 200, lookup.text
    first = lookup.json()["preferences"][0]
    assert first["product"]["name"] == "Classic Chino"
    assert first["attributes"]["waist"] == "34"
    assert first["attributes"]["leg"] == "34"
    assert "note" not in first

    go_to(page, "Who looked")
    looked = page.locator("#access-log > li")
    by_code = looked.filter(has_text="using a checkout code you showed")
    expect(by_code).to_have_count(1)
    expect(by_code).to_contain_text("Till 1 at Oxford Street saw Classic Chino")
    expect(by_code).to_contain_text("with your sizes and details at checkout")
    expect(by_code).to_contain_text("today")
    expect(looked.filter(has_text="using your loyalty card")).to_have_count(1)
    look_at(page, "looked")

    # Withdraw: the very next lookup by card finds nothing.
    go_to(page, "Sharing")
    page.get_by_role("button", name="Stop sharing with the store tills").click()
    expect(status(page)).to_contain_text("You stopped sharing with the store tills.")
    expect(page.locator('section[data-audience="pos"]')).to_contain_text("Not shared")
    assert till_lookup(service, card=service.card).status_code == 404
    expect(page.locator("#consent-history li").first).to_contain_text(
        "You stopped sharing with Store tills at checkout."
    )

    # Export, then erase everything.
    go_to(page, "My data")
    look_at(page, "data")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download my data").click()
    exported = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.startswith("prefs-export-")
    assert "Classic Chino" in exported
    assert "before they changed the pockets" in exported
    json.loads(exported)

    confirm = page.get_by_label("Type ERASE to confirm")
    confirm.fill("erase")
    page.get_by_role("button", name="Erase everything").click()
    expect(page.locator("#alert")).to_contain_text("Nothing erased")
    assert httpx.get(f"{service.url}/v1/me", headers=bearer(token)).status_code == 200
    confirm.fill("ERASE")
    page.get_by_role("button", name="Erase everything").click()
    expect(status(page)).to_contain_text("Everything is erased.")
    expect(page.get_by_role("button", name="Sign in as a demo customer")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    assert httpx.get(f"{service.url}/v1/me", headers=bearer(token)).status_code == 404
    assert till_lookup(service, code=code).status_code == 404

    watch.assert_clean(service)
    log = service.output()
    assert token not in log
    assert "before they changed the pockets" not in log


def _partner_id(service: Service, token: str) -> str:
    partners = httpx.get(f"{service.url}/v1/partners", headers=bearer(token)).json()["items"]
    return str(next(p["id"] for p in partners if p["name"] == "Stitch & Co. tailors"))


def propose(service: Service, ref: str, preference: str, quantity: int) -> None:
    """The demo partner proposes a reorder of one of the customer's preferences."""
    placed = httpx.post(
        f"{service.url}/v1/partner/reorders",
        headers={**bearer(service.partner_key), "Idempotency-Key": str(uuid.uuid4())},
        json={"customer": ref, "preference": preference, "quantity": quantity},
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["state"] == "proposed"


def test_a_customer_confirms_or_declines_a_partners_proposal_on_the_page(
    service: Service, browser_page: tuple[Any, Watch]
) -> None:
    page, watch = browser_page
    token = sign_in_as_demo(page, service)
    audience = f"partner:{_partner_id(service, token)}"
    granted = httpx.put(
        f"{service.url}/v1/me/consents/{audience}",
        headers=bearer(token),
        json={"fields": ["product", "attributes"]},
    )
    assert granted.status_code == 200, granted.text
    consents = httpx.get(f"{service.url}/v1/me/consents", headers=bearer(token)).json()["items"]
    [ref] = [c["reference"] for c in consents if c["audience"] == audience]
    shown = httpx.get(
        f"{service.url}/v1/partner/customers/{ref}/preferences",
        headers=bearer(service.partner_key),
    ).json()["items"]
    [chinos] = [p["id"] for p in shown if p["product"]["name"] == "Classic Chino"]
    propose(service, ref, chinos, 1)
    propose(service, ref, chinos, 2)

    go_to(page, "Reorders")
    one = page.locator("#reorder-list > li").filter(has_text=f"1 {TIMES} Classic Chino")
    two = page.locator("#reorder-list > li").filter(has_text=f"2 {TIMES} Classic Chino")
    for proposal in (one, two):
        expect(proposal).to_contain_text("Proposed — waiting for your answer")
        expect(proposal).to_contain_text("placed by the partner for you")
    look_at(page, "reorder-proposals")

    page.get_by_role("button", name=f"Confirm the proposal of 1 {TIMES} Classic Chino").click()
    expect(status(page)).to_contain_text(f"You confirmed 1 {TIMES} Classic Chino")
    expect(one).to_contain_text("Requested")
    expect(one.get_by_role("button", name=re.compile("Confirm"))).to_have_count(0)

    page.get_by_role("button", name=f"Decline the proposal of 2 {TIMES} Classic Chino").click()
    page.get_by_role("dialog").get_by_role("button", name="Decline the proposal").click()
    expect(status(page)).to_contain_text(f"You declined 2 {TIMES} Classic Chino")
    expect(two).to_contain_text("Cancelled")

    mine = httpx.get(f"{service.url}/v1/me/reorders", headers=bearer(token)).json()["items"]
    assert sorted((r["quantity"], r["state"]) for r in mine if r["origin"] == "partner") == [
        (1, "requested"),
        (2, "cancelled"),
    ]
    watch.assert_clean(service)


# --- receipts a customer keeps ------------------------------------------------------------------


def test_a_customer_downloads_a_receipt_as_kantara_json_and_signed(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(
        f"keeper-{uuid.uuid4()}@example.test"
    )
    page.goto(f"{service.url}/#token={token}")
    page.get_by_role("button", name="Start my locker").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()
    go_to(page, "Sharing")
    share(page, "pos", "the store tills")
    [entry] = httpx.get(f"{service.url}/v1/me/consents/history", headers=bearer(token)).json()[
        "items"
    ]
    receipt_id = entry["receipt"]["receipt_id"]

    latest = page.locator("#consent-history > li").first
    latest.get_by_text("Show the receipt").click()
    as_json = latest.get_by_role("button", name=f"Download receipt {receipt_id[:8]} (JSON)")
    signed = latest.get_by_role("button", name=f"Download signed receipt {receipt_id[:8]} (JWS)")
    expect(as_json).to_be_visible()
    look_at(page, "receipt-downloads")

    with page.expect_download() as download:
        as_json.click()
    expect(status(page)).to_contain_text("The receipt is downloaded as a JSON file")
    assert download.value.suggested_filename == f"consent-receipt-{receipt_id[:8]}.json"
    document = Path(download.value.path()).read_bytes()
    kantara = json.loads(document)
    assert kantara["version"] == "KI-CR-v1.1.0"
    assert kantara["consentReceiptID"] == receipt_id
    assert kantara["services"][0]["purposes"][0]["purposeCategory"][-1] == (
        "dpv:ServicePersonalisation"
    )

    with page.expect_download() as download:
        signed.click()
    expect(status(page)).to_contain_text("The signed receipt is downloaded.")
    assert download.value.suggested_filename == f"consent-receipt-{receipt_id[:8]}.jws"
    jws = Path(download.value.path()).read_text()
    # anyone verifies it with the keys the service publishes, without signing in
    keys = jwt.PyJWKSet.from_dict(httpx.get(f"{service.url}/.well-known/jwks.json").json())
    key = keys[jwt.get_unverified_header(jws)["kid"]]
    assert jwt.PyJWS().decode(jws, key, algorithms=["EdDSA"]) == document
    watch.assert_clean(service)


# --- purchases into the locker ------------------------------------------------------------------


def test_tills_add_what_the_customer_buys_and_adding_by_hand_finds_the_catalogue(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(
        f"buyer-{uuid.uuid4()}@example.test"
    )
    card = f"60{uuid.uuid4().int % 10**14:014d}"
    page.goto(f"{service.url}/#token={token}")
    page.get_by_label("Loyalty card number (optional)").fill(card)
    page.get_by_role("button", name="Start my locker").click()
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_focused()
    # the card is proven at a till (the customer shows a code while it is scanned)
    code = httpx.post(
        f"{service.url}/v1/me/checkout-codes", headers=bearer(token), json={"fields": ["product"]}
    ).json()["code"]
    confirmed = httpx.post(
        f"{service.url}/v1/pos/cards/confirm",
        headers=bearer(service.till_key),
        json={"card": card, "code": code},
    )
    assert confirmed.status_code == 204, confirmed.text

    def buy() -> httpx.Response:
        return httpx.post(
            f"{service.url}/v1/pos/purchases",
            headers={**bearer(service.till_key), "Idempotency-Key": str(uuid.uuid4())},
            json={
                "card": card,
                "items": [
                    {
                        "sku": "AC-CHINO-SLIM",
                        "attributes": {"waist": "32", "leg": "32"},
                        "quantity": 1,
                        "purchased_on": "2026-09-14",
                    }
                ],
            },
        )

    assert buy().status_code == 404  # not before the customer says so

    go_to(page, "Sharing")
    purchases = page.locator('[data-audience="purchases"]')
    expect(purchases.locator(".shared-summary")).to_have_text("The tills add nothing.")
    purchases.get_by_role("button", name="Let the tills add what I buy…").click()
    purchases.get_by_role("button", name="Let them add").click()
    expect(status(page)).to_contain_text("Saved: the tills add what you buy to your preferences.")
    purchases = page.locator('[data-audience="purchases"]')
    expect(purchases.locator(".badge")).to_have_text("On")
    expect(page.locator("#consent-history > li").first).to_contain_text(
        "You let the store tills add what you buy to your preferences, until you stop it."
    )
    look_at(page, "sharing-purchases")

    bought = buy()
    assert bought.status_code == 200, bought.text
    assert bought.json() == {"added": 1, "updated": 0, "skipped": 0}
    go_to(page, "My preferences")
    slim = preference_card(page, "Slim Chino")
    expect(slim).to_contain_text("Added by a till: bought at store 0001 on")
    expect(slim).to_contain_text("14")
    expect(slim).to_contain_text("code AC-CHINO-SLIM")
    look_at(page, "purchase-added")

    go_to(page, "Who looked")
    expect(page.locator("#access-log > li").first).to_contain_text(
        "Till 1 at Oxford Street added Slim Chino, waist 32 leg 32, to your locker, "
        "using your loyalty card."
    )

    # Adding by hand: find the product in the catalogue, pick it, then the size.
    go_to(page, "My preferences")
    page.get_by_role("button", name="Add a preference").click()
    page.get_by_label("Find it in the shop's catalogue").fill("chino")
    results = page.locator(".catalogue-results button")
    expect(results).to_have_count(3)
    look_at(page, "catalogue-search")
    results.filter(has_text="Classic Chino").click()
    expect(page.locator("#add-panel input[id$='-sku']")).to_have_value("AC-CHINO-CLASSIC")
    expect(page.locator("#add-panel input[id$='-discontinued']")).to_be_checked()
    waist = page.locator("#add-panel input[id$='-waist']")
    expect(waist).to_be_focused()
    assert waist.get_attribute("list")  # the sizes the product comes in are offered
    waist.fill("34")
    page.locator("#add-panel input[id$='-leg']").fill("34")
    page.get_by_role("button", name="Save preference").click()
    classic = preference_card(page, "Classic Chino")
    expect(classic).to_contain_text("Discontinued")
    expect(classic).to_contain_text("code AC-CHINO-CLASSIC")
    expect(classic).not_to_contain_text("Added by a till")

    # One visit's purchases through a checkout code instead of the grant.
    go_to(page, "At the till")
    page.get_by_label("Let this till add what I buy today to my preferences").check()
    page.get_by_role("button", name="Make a checkout code").click()
    expect(page.locator("#keep-purchases-note")).to_be_visible()
    code = page.locator("section[data-code]").get_attribute("data-code")
    kept = httpx.post(
        f"{service.url}/v1/pos/purchases",
        headers={**bearer(service.till_key), "Idempotency-Key": str(uuid.uuid4())},
        json={"code": code, "items": [{"sku": "AC-MERINO-SCARF", "quantity": 1}]},
    )
    assert kept.status_code == 200, kept.text
    assert kept.json() == {"added": 1, "updated": 0, "skipped": 0}
    look_at(page, "till-keep-purchases")
    page.get_by_role("button", name="End this code").click()
    expect(status(page)).to_contain_text("Your checkout code is ended.")
    go_to(page, "My preferences")
    expect(preference_card(page, "Merino Scarf")).to_contain_text("Added by a till")
    watch.assert_clean(service)


def test_store_staff_work_their_stores_queue_on_their_page(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    # A customer (the demo one, through the API) asks the demo till's store for a scarf.
    token = httpx.post(f"{service.url}/dev/demo-session").json()["token"]
    mine = httpx.get(f"{service.url}/v1/me/preferences", headers=bearer(token)).json()["items"]
    wanted = mine[0]
    placed = httpx.post(
        f"{service.url}/v1/me/preferences/{wanted['id']}/reorders",
        headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 4, "fulfiller": "store:0001"},
    )
    assert placed.status_code == 201, placed.text
    number = placed.json()["id"][:8].upper()

    page.goto(f"{service.url}/store")
    expect(page.get_by_role("heading", level=1, name="Store reorders")).to_be_visible()
    page.get_by_label("Till key").fill("not-a-key")
    page.get_by_role("button", name="Open the queue").click()
    expect(page.locator("#alert")).to_contain_text("That is not a till key")
    page.get_by_label("Till key").fill("pos_" + "A" * 43)  # the shape, but no such key
    page.get_by_role("button", name="Open the queue").click()
    expect(page.locator("#alert")).to_contain_text("not accepted")
    page.get_by_label("Till key").fill(service.till_key)
    page.get_by_role("button", name="Open the queue").click()
    expect(page.get_by_role("heading", level=1, name="Reorders for this store")).to_be_focused()
    assert page.evaluate("sessionStorage.getItem('prefs.till-key')") == service.till_key

    order = page.locator("#store-queue > li").filter(has_text=f"order {number}")
    expect(order).to_contain_text(f"4 {TIMES} {wanted['product']['name']}")
    expect(order).to_contain_text("New — accept it to start")
    look_at(page, "store-queue")
    for button, shown, state in (
        ("Accept", "Accepted", "accepted"),
        ("Ready to collect", "Ready — waiting for the customer", "ready"),
    ):
        order.get_by_role("button", name=f"{button} order {number}").click()
        expect(status(page)).to_contain_text(f"Order {number}: {shown}")
        expect(order).to_contain_text(shown)
        seen = httpx.get(f"{service.url}/v1/me/reorders", headers=bearer(token)).json()["items"]
        assert [r["state"] for r in seen if r["id"] == placed.json()["id"]] == [state]
    order.get_by_role("button", name=f"Handed over order {number}").click()
    expect(status(page)).to_contain_text(f"Order {number}: Collected")
    expect(page.locator("#store-queue")).not_to_contain_text(f"order {number}")
    seen = httpx.get(f"{service.url}/v1/me/reorders", headers=bearer(token)).json()["items"]
    assert [r["state"] for r in seen if r["id"] == placed.json()["id"]] == ["collected"]
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Till key")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('prefs.till-key')") is None
    watch.assert_clean(service)


def test_a_product_without_a_code_shows_and_an_edit_removes_only_the_cleared_detail(
    service: Service,
    browser_page: tuple[Any, Watch],
) -> None:
    page, watch = browser_page
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(
        f"nosku-{uuid.uuid4()}@example.test"
    )
    assert httpx.post(f"{service.url}/v1/me", headers=bearer(token)).status_code == 201
    kept = httpx.post(
        f"{service.url}/v1/me/preferences",
        headers=bearer(token),
        json={
            "product": {"name": "Blue linen shirt"},
            "attributes": {"colour": "blue", "fit": "relaxed", "pattern": "plain"},
        },
    )
    assert kept.status_code == 201, kept.text
    shirt = kept.json()
    page.goto(f"{service.url}/#token={token}")
    card = preference_card(page, "Blue linen shirt")
    expect(card).to_contain_text("Colour: blue")
    expect(card).not_to_contain_text("code")
    expect(card).not_to_contain_text("null")

    page.locator(f"#edit-{shirt['id']}").click()
    form = page.get_by_role("form", name="Edit Blue linen shirt")
    form.get_by_label("Colour", exact=True).fill("")
    form.get_by_role("button", name="Save changes").click()
    expect(status(page)).to_contain_text("Your changes to Blue linen shirt are saved.")
    stored = httpx.get(
        f"{service.url}/v1/me/preferences/{shirt['id']}", headers=bearer(token)
    ).json()
    # the cleared colour is gone (sent as null in the merge patch); the other details stay
    assert stored["attributes"] == {"fit": "relaxed", "pattern": "plain"}
    assert stored["product"]["sku"] is None
    watch.assert_clean(service)
