"""The page's rough edges a newcomer hit, each at phone (360 px) and desktop (1280 px) width.

The preference card keeps Reorder and Edit and puts the rest behind a keyboard-operable "More";
only a product the catalogue does not know can be marked discontinued; reorder cards show the
sizes sent; each preference says who may see it; the export comes as a readable page too, with
every piece of the customer's text escaped; "Who looked" names the store and lists every
preference on request; the navigation keeps one line per label; the wording names audiences as
a sentence does; receipts start with a plain summary; dates follow the page's language.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from prefs.auth import DevIssuer
from tests.browser.views import look_at
from tests.support.browser import CHROMIUM, Service, Watch

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package"
)

TIMES = "\u00d7"
WIDTHS = pytest.mark.parametrize("width", [360, 1280], ids=["phone", "desktop"])
# in the demo catalogue (discontinued there), and not in it
CHINOS = {
    "product": {"sku": "AC-CHINO-CLASSIC", "name": "Classic Chino", "brand": "Acme"},
    "attributes": {"waist": "34", "leg": "32", "colour": "khaki"},
}
JUMPER = {
    "product": {"sku": "MR-CREW-L", "name": "Merino Crew Jumper", "brand": "Fjell"},
    "attributes": {"size": "L", "colour": "navy"},
    "status": "available",
}
SHIRT = {"product": {"sku": "AC-OXFORD", "name": "Oxford Shirt"}, "attributes": {"size": "M"}}
BOOT = {"product": {"sku": "CK-DESERT-BOOT", "name": "Desert Boot"}, "attributes": {"size": "11"}}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signed_in(
    page: Any, service: Service, width: int, *preferences: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """A new customer keeping ``preferences``, signed in on the page at ``width``."""
    page.set_viewport_size({"width": width, "height": 900})
    token = DevIssuer(service.data_dir / "dev-issuer.pem").mint(f"edge-{uuid.uuid4()}@example.test")
    assert httpx.post(f"{service.url}/v1/me", headers=bearer(token)).status_code == 201
    kept = []
    for body in preferences:
        made = httpx.post(f"{service.url}/v1/me/preferences", headers=bearer(token), json=body)
        assert made.status_code == 201, made.text
        kept.append(made.json())
    page.goto(f"{service.url}/#token={token}")
    expect(page.get_by_role("heading", level=1, name="My preferences")).to_be_visible()
    return token, kept


def card_of(page: Any, name: str) -> Any:
    return page.locator("#preference-list > li").filter(has=page.locator("h2", has_text=name))


def go_to(page: Any, label: str, heading: str | None = None) -> None:
    page.get_by_role("navigation", name="Sections").get_by_role(
        "link", name=label, exact=True
    ).click()
    expect(page.get_by_role("heading", level=1, name=heading or label)).to_be_focused()


def grant(service: Service, token: str, audience: str, **body: Any) -> None:
    response = httpx.put(
        f"{service.url}/v1/me/consents/{audience}", headers=bearer(token), json=body
    )
    assert response.status_code == 200, response.text


def partner_audience(service: Service, token: str) -> str:
    partners = httpx.get(f"{service.url}/v1/partners", headers=bearer(token)).json()["items"]
    return f"partner:{partners[0]['id']}"


# --- the preference card ------------------------------------------------------------------------


@WIDTHS
def test_a_preference_card_shows_reorder_and_edit_and_keeps_the_rest_behind_more(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    signed_in(page, service, width, CHINOS, JUMPER)
    chinos = card_of(page, "Classic Chino")

    # at rest: the two everyday actions and "More", on one row; no Delete in sight
    buttons = chinos.get_by_role("button")
    expect(buttons).to_have_count(3)
    names = [b.get_attribute("id").split("-")[0] for b in buttons.all()]
    assert names == ["reorder", "edit", "more"]
    tops = {round(b.bounding_box()["y"]) for b in buttons.all()}
    assert len(tops) == 1, f"the card's buttons wrap at {width} px"
    expect(chinos.get_by_role("button", name=re.compile("Delete"))).to_have_count(0)

    # by keyboard: Tab to "More", open it, move with the arrows, close with Escape
    chinos.get_by_role("button", name="Reorder Classic Chino").focus()
    page.keyboard.press("Tab")
    expect(chinos.get_by_role("button", name="Edit Classic Chino")).to_be_focused()
    page.keyboard.press("Tab")
    more = chinos.get_by_role("button", name="More actions for Classic Chino")
    expect(more).to_be_focused()
    expect(more).to_have_attribute("aria-expanded", "false")
    page.keyboard.press("Enter")
    expect(more).to_have_attribute("aria-expanded", "true")
    menu = page.get_by_role("list", name="More actions for Classic Chino")
    expect(menu.get_by_role("button", name="Move up")).to_be_disabled()  # it is first
    expect(menu.get_by_role("button", name="Move down")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("button", name="Delete Classic Chino")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(menu.get_by_role("button", name="Move down")).to_be_focused()
    look_at(page, "preference-more-menu")
    page.keyboard.press("Escape")
    expect(menu).to_be_hidden()
    expect(more).to_be_focused()
    expect(more).to_have_attribute("aria-expanded", "false")

    # the menu's actions work: move the jumper up, by keyboard, and it stays in reach
    jumper_more = page.get_by_role("button", name="More actions for Merino Crew Jumper")
    jumper_more.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Move up — Merino Crew Jumper")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text(
        "Merino Crew Jumper moved up, to position 1 of 2."
    )
    expect(page.locator("#preference-list > li").first).to_contain_text("Merino Crew Jumper")
    expect(page.get_by_role("button", name="Move down — Merino Crew Jumper")).to_be_focused()
    watch.assert_clean(service)


@WIDTHS
def test_only_a_product_the_catalogue_does_not_know_can_be_marked_discontinued(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    token, [chinos, _] = signed_in(page, service, width, CHINOS, JUMPER)
    assert chinos["status_source"] == "catalogue"

    # the catalogue's product: its status is the shop's, in the menu and in Edit
    card_of(page, "Classic Chino").get_by_role("button", name="More actions").click()
    menu = page.get_by_role("list", name="More actions for Classic Chino")
    expect(menu.get_by_role("button")).to_have_count(3)  # up, down, delete
    expect(menu.get_by_role("button", name=re.compile("Mark"))).to_have_count(0)
    page.get_by_role("button", name="Edit Classic Chino").click()
    form = page.get_by_role("form", name="Edit Classic Chino")
    expect(form).to_contain_text("The shop's catalogue says it is discontinued")
    expect(form.get_by_label(re.compile("discontinued"))).to_have_count(0)
    form.get_by_label("Note").fill("The old cut.")
    form.get_by_role("button", name="Save changes").click()  # saves without touching status
    expect(page.locator("#status")).to_contain_text("Your changes to Classic Chino are saved.")
    # and the service refuses it too
    url = f"{service.url}/v1/me/preferences/{chinos['id']}"
    etag = httpx.get(url, headers=bearer(token)).headers["etag"]
    refused = httpx.patch(
        url, headers={**bearer(token), "If-Match": etag}, json={"status": "available"}
    )
    assert refused.status_code == 409, refused.text

    # the customer's own product: theirs to mark, from the menu
    card_of(page, "Merino Crew Jumper").get_by_role("button", name="More actions").click()
    page.get_by_role("button", name="Mark discontinued — Merino Crew Jumper").click()
    expect(page.locator("#status")).to_contain_text("Merino Crew Jumper is marked discontinued.")
    expect(card_of(page, "Merino Crew Jumper")).to_contain_text("Discontinued")
    expect(
        page.get_by_role("button", name="Mark available again — Merino Crew Jumper")
    ).to_be_focused()
    look_at(page, "preference-status-menu")

    # adding a product found in the catalogue: its status is shown, not the customer's to set
    page.get_by_role("button", name="Add a preference").click()
    page.get_by_label("Find it in the shop's catalogue").fill("chino")
    page.locator(".catalogue-results button").filter(has_text="Classic Chino").click()
    gone = page.get_by_label(re.compile("The shop no longer sells it"))
    expect(gone).to_be_checked()
    expect(gone).to_be_disabled()
    expect(gone).to_have_accessible_name(re.compile("the shop's catalogue says so"))
    page.locator("#add-panel input[id$='-sku']").fill("MY-OWN-CODE")  # no longer the catalogue's
    expect(gone).to_be_enabled()
    watch.assert_clean(service)


# --- reorders -----------------------------------------------------------------------------------


@WIDTHS
def test_reorder_cards_show_the_sizes_that_tell_two_reorders_apart(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    token, [chinos] = signed_in(page, service, width, CHINOS)
    url = f"{service.url}/v1/me/preferences/{chinos['id']}"
    for waist in ("34", "36"):
        current = httpx.get(url, headers=bearer(token))
        changed = httpx.patch(
            url,
            headers={**bearer(token), "If-Match": current.headers["etag"]},
            json={"attributes": {**current.json()["attributes"], "waist": waist}},
        )
        assert changed.status_code == 200, changed.text
        placed = httpx.post(
            f"{url}/reorders",
            headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": 1, "fulfiller": "store:0001"},
        )
        assert placed.status_code == 201, placed.text

    go_to(page, "Reorders")
    cards = page.locator("#reorder-list > li")
    expect(cards).to_have_count(2)
    for waist in ("34", "36"):
        reorder = cards.filter(has_text=f"Waist: {waist}")
        expect(reorder).to_have_count(1)
        expect(reorder).to_contain_text(f"1 {TIMES} Classic Chino")
        expect(reorder).to_contain_text("Leg: 32")
        expect(reorder).to_contain_text("code AC-CHINO-CLASSIC")
        # each cancel button says which reorder it cancels
        expect(
            page.get_by_role(
                "button", name=f"Cancel this reorder of 1 {TIMES} Classic Chino, waist {waist}"
            )
        ).to_have_count(1)
    look_at(page, "reorder-sizes")
    watch.assert_clean(service)


# --- who may see each preference ----------------------------------------------------------------


@WIDTHS
def test_each_preference_says_who_may_see_it(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    token, [_, jumper] = signed_in(page, service, width, CHINOS, JUMPER)
    for name in ("Classic Chino", "Merino Crew Jumper"):
        expect(card_of(page, name).locator(".shared-with")).to_have_text(
            f"Who may see it: nobody but you. Share it — {name}"
        )

    grant(service, token, "pos", fields=["product", "attributes"], preferences="all")
    tailors = partner_audience(service, token)
    grant(
        service,
        token,
        tailors,
        fields=["product", "attributes", "note"],
        preferences=[jumper["id"]],
    )
    # the anonymous counts show nobody a preference: not listed
    grant(service, token, "insights", fields=["product", "attributes"], preferences="all")
    page.reload()
    chinos_line = card_of(page, "Classic Chino").locator(".shared-with")
    expect(chinos_line).to_contain_text("Who may see it: Store tills (product, sizes).")
    expect(card_of(page, "Merino Crew Jumper").locator(".shared-with")).to_contain_text(
        "Who may see it: Store tills (product, sizes) and "
        "Stitch & Co. tailors (product, sizes, note)."
    )
    chinos_line.get_by_role("link", name="Change — Classic Chino").click()
    expect(page.get_by_role("heading", level=1, name="Sharing")).to_be_visible()
    go_to(page, "Preferences", "My preferences")
    look_at(page, "preferences-shared-with")
    watch.assert_clean(service)


# --- the export, readable -----------------------------------------------------------------------

HOSTILE_NAME = '<script>alert("name")</script> Chino & Co'
HOSTILE_NOTE = "</style><img src=x onerror=alert(1)> keep 'this' & \"that\""
HOSTILE_DETAIL = '"><b>bold</b>'


@WIDTHS
def test_the_export_downloads_as_a_readable_page_that_escapes_every_word(
    service: Service, browser_page: tuple[Any, Watch], width: int, chromium: Any, tmp_path: Path
) -> None:
    page, watch = browser_page
    hostile = {
        "product": {"sku": "X-1", "name": HOSTILE_NAME, "brand": "<i>Brand</i>"},
        "attributes": {"colour": HOSTILE_DETAIL, "waist": "34"},
        "note": HOSTILE_NOTE,
        "status": "available",
    }
    signed_in(page, service, width, hostile, JUMPER)
    go_to(page, "My data")
    readable = page.get_by_role("button", name="Download a readable copy (HTML)")
    as_json = page.get_by_role("button", name="Download my data (JSON)")
    expect(readable).to_be_visible()
    expect(as_json).to_be_visible()
    look_at(page, "data-export-choices")
    with page.expect_download() as download:
        readable.click()
    expect(page.locator("#status")).to_contain_text("Your data is downloaded as a page")
    assert re.fullmatch(r"prefs-export-\d{4}-\d{2}-\d{2}\.html", download.value.suggested_filename)
    path = tmp_path / download.value.suggested_filename  # opened by its name, as an .html file
    download.value.save_as(path)
    html = path.read_text()
    assert html.startswith("<!doctype html>")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    # the customer's text is there, escaped: none of it is markup
    assert '&lt;script&gt;alert("name")&lt;/script&gt; Chino &amp; Co' in html
    assert "&lt;/style&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;i&gt;Brand&lt;/i&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    for markup in ("<script", "<img", "<b>", "<i>", "</style><"):
        assert markup not in html, markup

    # opened as a person opens it: the words read as written, nothing runs
    reader = chromium.new_context(locale="en-GB")
    opened = reader.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.goto(path.as_uri())
    expect(
        opened.get_by_role("heading", level=1, name="Everything your preference locker holds")
    ).to_be_visible()
    expect(opened.get_by_role("heading", name=f"1. {HOSTILE_NAME}")).to_be_visible()
    expect(opened.get_by_text(HOSTILE_NOTE)).to_be_visible()
    expect(opened.get_by_role("heading", name="2. Merino Crew Jumper")).to_be_visible()
    for heading in ("Your preferences", "Who may see them now", "Reorders", "Who looked"):
        expect(opened.get_by_role("heading", level=2, name=heading)).to_be_visible()
    assert opened.locator("script, img, b, i").count() == 0
    assert not dialogs
    reader.close()

    with page.expect_download() as download:
        as_json.click()
    assert download.value.suggested_filename.endswith(".json")
    exported = json.loads(Path(download.value.path()).read_text())
    assert [p["note"] for p in exported["preferences"]] == [HOSTILE_NOTE, None]
    watch.assert_clean(service)


# --- who looked ---------------------------------------------------------------------------------


@WIDTHS
def test_who_looked_names_the_store_and_lists_every_preference_on_request(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    token, _ = signed_in(page, service, width, CHINOS, JUMPER, SHIRT, BOOT)
    code = httpx.post(
        f"{service.url}/v1/me/checkout-codes",
        headers=bearer(token),
        json={"fields": ["product", "attributes"]},
    ).json()["code"]
    looked = httpx.post(
        f"{service.url}/v1/pos/lookup", headers=bearer(service.till_key), json={"code": code}
    )
    assert looked.status_code == 200, looked.text

    go_to(page, "Who looked")
    entry = page.locator("#access-log > li").first
    expect(entry).to_contain_text(
        "Till 1 at Oxford Street saw Classic Chino, Merino Crew Jumper, Oxford Shirt and 1 more "
        "with your sizes and details at checkout, using a checkout code you showed."
    )
    expect(entry).not_to_contain_text("Store 0001")
    listed = entry.locator(".log-preferences li")
    expect(listed.first).to_be_hidden()
    entry.get_by_text("Show all 4 preferences").focus()
    page.keyboard.press("Enter")
    expect(listed).to_have_text(
        ["Classic Chino", "Merino Crew Jumper", "Oxford Shirt", "Desert Boot"]
    )
    look_at(page, "looked-expanded")
    watch.assert_clean(service)


# --- navigation ---------------------------------------------------------------------------------

ONE_LINE_EACH = """
() => [...document.querySelectorAll('#sections a')].map((link) => {
  const range = document.createRange();
  range.selectNodeContents(link);
  return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
})
"""
ROWS = (
    "() => new Set([...document.querySelectorAll('#sections li')].map((li) => li.offsetTop)).size"
)


@WIDTHS
def test_the_navigation_keeps_every_label_on_one_line(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    signed_in(page, service, width)
    nav = page.get_by_role("navigation", name="Sections")
    expect(nav.get_by_role("link")).to_have_text(
        ["Preferences", "Reorders", "Sharing", "At the till", "Who looked", "My data"]
    )
    assert page.evaluate(ONE_LINE_EACH) == [1] * 6
    rows = page.evaluate(ROWS)
    assert rows == (2 if width < 800 else 1), rows
    # every section in view at once (nothing to scroll to), each link a full-size target
    for link in nav.get_by_role("link").all():
        box = link.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        assert box["height"] >= 44
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    expect(page).to_have_title("Preferences — your preference locker")
    watch.assert_clean(service)


# --- wording, receipts and dates ----------------------------------------------------------------


@WIDTHS
def test_sharing_names_audiences_as_a_sentence_does_and_receipts_start_in_plain_words(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    signed_in(page, service, width, JUMPER)
    go_to(page, "Sharing")
    tills = page.locator('section[data-audience="pos"]')
    expect(tills.get_by_role("heading", name="Store tills")).to_be_visible()
    expect(page.locator("#view")).not_to_contain_text("Share with At the till")
    expect(page.locator("#view")).not_to_contain_text("which products")
    expect(page.get_by_role("button", name="Share with Stitch & Co. tailors…")).to_be_visible()
    tills.get_by_role("button", name="Share with the store tills…").click()
    tills.get_by_role("button", name="Share", exact=True).click()
    expect(page.locator("#status")).to_contain_text("Saved:")
    tills = page.locator('section[data-audience="pos"]')
    expect(tills.get_by_role("button", name="Change what the store tills may see")).to_be_visible()
    expect(tills.get_by_role("button", name="Stop sharing with the store tills")).to_be_visible()

    latest = page.locator("#consent-history > li").first
    latest.get_by_text("Show the receipt").click()
    plain = latest.locator(".receipt-summary")
    expect(plain).to_be_visible()
    expect(plain).to_have_text(
        re.compile(
            r"^In short: You let Store tills at checkout see the products and your sizes and "
            r"details in all your preferences, until you stop it\. .+ is responsible for it, and "
            r"this receipt, recorded \d{1,2} [A-Z][a-z]+ \d{4} at \d{2}:\d{2}:\d{2}, is your proof\.$"
        )
    )
    # the summary comes first; the standard terms and fingerprints wait behind their own toggle
    first = latest.locator("details.receipt-details > :not(summary)").first
    expect(first).to_have_class("receipt-summary")
    expect(latest.get_by_text("dpv:ServicePersonalisation", exact=False)).to_be_hidden()
    expect(latest.get_by_text("Fingerprint", exact=True)).to_be_hidden()
    latest.get_by_text("Technical details").click()
    expect(latest.get_by_text("Fingerprint", exact=True)).to_be_visible()
    look_at(page, "receipt-plain-first")
    watch.assert_clean(service)


@WIDTHS
def test_dates_follow_the_pages_language_not_the_browsers(
    service: Service, chromium: Any, width: int
) -> None:
    context = chromium.new_context(
        viewport={"width": width, "height": 900}, locale="en-US", timezone_id="America/New_York"
    )
    page = context.new_page()
    bought = {**JUMPER, "purchases": 2, "last_purchased_on": "2023-09-14"}
    signed_in(page, service, width, bought)
    assert page.evaluate("navigator.language") == "en-US"
    assert page.evaluate("document.documentElement.lang") == "en-GB"
    jumper = card_of(page, "Merino Crew Jumper")
    expect(jumper).to_contain_text("Bought 2 times, last on 14 September 2023.")
    expect(jumper).not_to_contain_text("September 14")

    go_to(page, "Sharing")
    tills = page.locator('section[data-audience="pos"]')
    tills.get_by_role("button", name="Share with the store tills…").click()
    tills.get_by_label("Share until (optional)").fill("2030-01-04")
    expect(tills.locator(".until-said")).to_have_text(
        "Sharing ends at the end of Friday, 4 January 2030."
    )
    tills.get_by_role("button", name="Share", exact=True).click()
    expect(page.locator('section[data-audience="pos"] .shared-summary')).to_contain_text(
        "until 4 January 2030"
    )
    latest = page.locator("#consent-history > li").first
    expect(latest.locator("time")).to_have_text(re.compile(r"^today \d{2}:\d{2}$"))  # 24-hour
    context.close()


@WIDTHS
def test_a_product_without_a_code_shows_without_one(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    """Once a customer may keep a product without a SKU, its cards show it without a code."""
    page, watch = browser_page
    token, [jumper] = signed_in(page, service, width, JUMPER)
    placed = httpx.post(
        f"{service.url}/v1/me/preferences/{jumper['id']}/reorders",
        headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
        json={"quantity": 1, "fulfiller": "store:0001"},
    )
    assert placed.status_code == 201, placed.text

    def without_sku(route: Any) -> None:
        answer = route.fetch()
        page_of_items = answer.json()
        for item in page_of_items["items"]:
            product = (item.get("item") or item).get("product") or {}
            product.pop("sku", None)
        route.fulfill(response=answer, json=page_of_items)

    page.route(re.compile(r".*/v1/me/(preferences|reorders)(\?.*)?$"), without_sku)
    page.reload()
    card = card_of(page, "Merino Crew Jumper")
    expect(card.locator(".meta").first).to_have_text("Fjell")
    expect(card).not_to_contain_text("code")
    go_to(page, "Reorders")
    reorder = page.locator("#reorder-list > li").first
    expect(reorder).to_contain_text(f"1 {TIMES} Merino Crew Jumper")
    expect(reorder).to_contain_text("Fjell")
    expect(reorder).not_to_contain_text("code")
    watch.assert_clean(service)


# --- what withdrawing a partner's consent did ----------------------------------------------------


@WIDTHS
def test_stopping_sharing_with_a_partner_says_which_reorders_it_cancelled(
    service: Service, browser_page: tuple[Any, Watch], width: int
) -> None:
    page, watch = browser_page
    token, [chinos, jumper] = signed_in(page, service, width, CHINOS, JUMPER)
    audience = partner_audience(service, token)
    grant(service, token, audience, fields=["product", "attributes"], preferences="all")
    partner = audience.split(":", 1)[1]
    for preference, quantity in ((chinos, 1), (jumper, 2)):
        placed = httpx.post(
            f"{service.url}/v1/me/preferences/{preference['id']}/reorders",
            headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
            json={"quantity": quantity, "fulfiller": f"partner:{partner}"},
        )
        assert placed.status_code == 201, placed.text

    go_to(page, "Sharing")
    page.get_by_role("button", name="Stop sharing with Stitch & Co. tailors").click()
    status = page.locator("#status")
    expect(status).to_contain_text("You stopped sharing with Stitch & Co. tailors.")
    expect(status).to_contain_text(
        "This also cancelled 2 reorders Stitch & Co. tailors had not accepted yet:"
    )
    expect(status).to_contain_text(f"1 {TIMES} Classic Chino (34, 32, khaki)")
    expect(status).to_contain_text(f"2 {TIMES} Merino Crew Jumper (L, navy)")
    look_at(page, "sharing-withdrawal-cancelled")

    # the answer told the truth: both reorders are cancelled
    mine = httpx.get(f"{service.url}/v1/me/reorders", headers=bearer(token)).json()["items"]
    assert sorted(r["state"] for r in mine) == ["cancelled", "cancelled"]

    # withdrawing what is not in force again: nothing cancelled, nothing said about reorders
    again = httpx.delete(f"{service.url}/v1/me/consents/{audience}", headers=bearer(token))
    assert again.status_code == 204
    watch.assert_clean(service)
