"""Text shown at the till or to partners carries no invisible tricks: bidirectional overrides and
isolates (which reorder what a cashier reads), C1 control characters, zero-width characters and
line or paragraph separators are refused with a 400 naming the field, and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.customer import CHINOS

REFUSED = {
    "right-to-left override": "\u202e",
    "left-to-right override": "\u202d",
    "right-to-left embedding": "\u202b",
    "pop directional formatting": "\u202c",
    "first strong isolate": "\u2068",
    "right-to-left isolate": "\u2067",
    "pop directional isolate": "\u2069",
    "C1 next line": "\u0085",
    "C1 control 0x9b": "\u009b",
    "C1 control 0x80": "\u0080",
    "zero-width space": "\u200b",
    "word joiner": "\u2060",
    "zero-width no-break space": "\ufeff",
    "line separator": "\u2028",
    "paragraph separator": "\u2029",
    "soft hyphen": "\u00ad",
    "Mongolian vowel separator": "\u180e",
    "Hangul filler": "\u3164",
    "Hangul choseong filler": "\u115f",
    "Khmer inherent vowel": "\u17b4",
    "invisible times": "\u2062",
    "interlinear annotation anchor": "\ufff9",
}
KEPT = {  # ordinary text in scripts that need these: never refused
    "Persian with a zero-width non-joiner": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
    "a family emoji (zero-width joiners)": "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "Hebrew with a right-to-left mark": "\u05e9\u05dc\u05d5\u05dd\u200f",
    "Arabic": "\u0633\u0631\u0648\u0627\u0644",
}


def _with(body: dict[str, Any], field: str, text: str) -> tuple[dict[str, Any], str]:
    """The body with ``text`` inside ``field``, and the name the error must give."""
    body = json.loads(json.dumps(body))
    if field in ("name", "brand", "category", "sku"):
        body["product"][field] += text + "x"
        return body, f"product.{field}"
    if field == "attribute":
        body["attributes"]["colour"] = "khaki" + text
        return body, "attributes"
    body["note"] = "The old cut" + text + ", before they changed the pockets."
    return body, "note"


FIELDS = ["name", "brand", "category", "sku", "attribute", "note"]


@pytest.mark.parametrize("character", list(REFUSED))
@pytest.mark.parametrize("field", FIELDS)
async def test_an_invisible_or_reordering_character_is_refused_naming_the_field(
    client, new_customer, field, character
):
    customer = await new_customer()
    body, name = _with(CHINOS, field, REFUSED[character])
    response = await client.post("/v1/me/preferences", headers=customer.headers, json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    keys = [error.get("key", "") for error in response.json()["errors"]]
    assert any(key.startswith(name) for key in keys), keys
    listed = await client.get("/v1/me/preferences", headers=customer.headers)
    assert listed.json()["items"] == []


@pytest.mark.parametrize("character", ["right-to-left override", "line separator", "C1 next line"])
async def test_an_edited_note_with_such_a_character_is_refused_and_the_old_one_kept(
    client, new_customer, character
):
    customer = await new_customer()
    created = await client.post("/v1/me/preferences", headers=customer.headers, json=CHINOS)
    assert created.status_code == 201
    preference = created.json()
    response = await client.patch(
        f"/v1/me/preferences/{preference['id']}",
        headers={**customer.headers, "If-Match": f'"{preference["version"]}"'},
        json={"note": "mine" + REFUSED[character]},
    )
    assert response.status_code == 400, response.text
    assert [e["key"] for e in response.json()["errors"]] == ["note"]
    again = await client.get(f"/v1/me/preferences/{preference['id']}", headers=customer.headers)
    assert again.json()["note"] == CHINOS["note"]


@pytest.mark.parametrize("text", list(KEPT))
async def test_text_in_scripts_that_need_joiners_and_marks_is_kept(client, new_customer, text):
    customer = await new_customer()
    body = {**CHINOS, "note": KEPT[text], "product": {**CHINOS["product"], "name": KEPT[text]}}
    response = await client.post("/v1/me/preferences", headers=customer.headers, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["note"] == KEPT[text]
