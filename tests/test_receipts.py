"""Receipts a customer can keep: every receipt as a Kantara Consent Receipt v1.1 document, valid
against the specification's fields, taken from the ledger; signed as a JWS that anyone verifies
with the keys published at /.well-known/jwks.json, before and after the receipt key is rotated."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema_rs
import jwt
import msgspec
import pytest

from prefs.retention import service as retention
from prefs.settings import Settings
from tests.support.customer import CHINOS, grant, keep, withdraw
from tests.support.partner import partner_key
from tests.support.servers import serving

PROBLEM_JSON = "application/problem+json"


def text(min_length: int = 1) -> dict[str, Any]:
    return {"type": "string", "minLength": min_length}


def strings() -> dict[str, Any]:
    return {"type": "array", "items": text()}


# The Kantara Initiative Consent Receipt Specification v1.1.0 (2018-02-20), its fields as the
# specification lists them (section 4, "Consent Receipt Structure"; JSON names, types and MUST /
# MAY), written as a JSON Schema. MUST fields are required; MAY fields (publicKey, language,
# onBehalf, piiControllerUrl, primaryPurpose, spiCat) have their types checked when present;
# thirdPartyName is a MUST when thirdPartyDisclosure is true, and so are spiCat's categories when
# sensitive is. No other fields: a receipt says what the specification defines, nothing else.
KANTARA_CONSENT_RECEIPT_V1_1: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Kantara Consent Receipt v1.1.0",
    "type": "object",
    "required": [
        "version",
        "jurisdiction",
        "consentTimestamp",
        "collectionMethod",
        "consentReceiptID",
        "piiPrincipalId",
        "piiControllers",
        "policyUrl",
        "services",
        "sensitive",
    ],
    "properties": {
        "version": {"const": "KI-CR-v1.1.0"},
        "jurisdiction": text(),
        "consentTimestamp": {"type": "integer", "minimum": 0},  # NumericDate: epoch seconds
        "collectionMethod": text(),
        "consentReceiptID": text(),
        "publicKey": text(),
        "language": {"type": "string", "pattern": "^[a-z]{2}$"},  # ISO 639-1
        "piiPrincipalId": text(),
        "piiControllers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["piiController", "contact", "address", "email", "phone"],
                "properties": {
                    "piiController": text(),
                    "onBehalf": {"type": "boolean"},
                    "contact": text(),
                    "address": {"type": "object", "minProperties": 1},
                    "email": text(),
                    "phone": text(),
                    "piiControllerUrl": {"type": "string", "pattern": "^https?://"},
                },
                "additionalProperties": False,
            },
        },
        "policyUrl": {"type": "string", "pattern": "^https?://"},
        "services": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["service", "purposes"],
                "properties": {
                    "service": text(),
                    "purposes": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": [
                                "purpose",
                                "purposeCategory",
                                "consentType",
                                "piiCategory",
                                "termination",
                                "thirdPartyDisclosure",
                            ],
                            "properties": {
                                "purpose": text(),
                                "purposeCategory": strings(),
                                "consentType": text(),
                                "piiCategory": strings(),
                                "primaryPurpose": {"type": "boolean"},
                                "termination": text(),
                                "thirdPartyDisclosure": {"type": "boolean"},
                                "thirdPartyName": text(),
                            },
                            "if": {"properties": {"thirdPartyDisclosure": {"const": True}}},
                            "then": {"required": ["thirdPartyName"]},
                            "additionalProperties": False,
                        },
                    },
                },
                "additionalProperties": False,
            },
        },
        "sensitive": {"type": "boolean"},
        "spiCat": strings(),
    },
    "if": {"properties": {"sensitive": {"const": True}}},
    "then": {"required": ["spiCat"], "properties": {"spiCat": {"minItems": 1}}},
    "additionalProperties": False,
}
KANTARA = jsonschema_rs.validator_for(KANTARA_CONSENT_RECEIPT_V1_1)


def kantara_problems(document: Any) -> list[str]:
    return [f"{error.instance_path}: {error.message}" for error in KANTARA.iter_errors(document)]


def test_the_schema_refuses_documents_that_break_the_specification():
    """The schema is only worth its test if it refuses what the specification does not allow."""
    valid: dict[str, Any] = {
        "version": "KI-CR-v1.1.0",
        "jurisdiction": "GB",
        "consentTimestamp": 1_510_592_400,
        "collectionMethod": "Web form",
        "consentReceiptID": str(uuid.uuid4()),
        "language": "en",
        "piiPrincipalId": "someone",
        "piiControllers": [
            {
                "piiController": "A shop",
                "contact": "Privacy team",
                "address": {"streetAddress": "1 High Street"},
                "email": "privacy@shop.example",
                "phone": "+44 20 7946 0000",
            }
        ],
        "policyUrl": "https://shop.example/privacy",
        "services": [
            {
                "service": "Orders",
                "purposes": [
                    {
                        "purpose": "Deliver",
                        "purposeCategory": ["3 - Delivery"],
                        "consentType": "EXPLICIT",
                        "piiCategory": ["2 - Contact"],
                        "termination": "On request",
                        "thirdPartyDisclosure": True,
                        "thirdPartyName": "A courier",
                    }
                ],
            }
        ],
        "sensitive": False,
        "spiCat": [],
    }
    assert kantara_problems(valid) == []

    def without(document: dict[str, Any], *path: Any) -> dict[str, Any]:
        copy: Any = json.loads(json.dumps(document))
        holder = copy
        for step in path[:-1]:
            holder = holder[step]
        del holder[path[-1]]
        result: dict[str, Any] = copy
        return result

    purpose = ("services", 0, "purposes", 0)
    broken = [
        without(valid, "jurisdiction"),
        without(valid, "consentReceiptID"),
        without(valid, "piiControllers", 0, "email"),
        without(valid, "piiControllers", 0, "address"),
        without(valid, "policyUrl"),
        without(valid, *purpose, "purposeCategory"),
        without(valid, *purpose, "termination"),
        without(valid, *purpose, "thirdPartyName"),  # disclosed to a third party: name it
        {**valid, "version": "KI-CR-v1.0.0"},
        {**valid, "consentTimestamp": "2017-11-13T17:00:00Z"},
        {**valid, "consentTimestamp": 1_510_592_400.5},
        {**valid, "sensitive": True},  # sensitive, without its categories
        {**valid, "state": "ConsentGiven"},  # not a field of the specification
    ]
    for document in broken:
        assert kantara_problems(document), document


# --- every receipt the service issues -----------------------------------------------------------


def in_the_future(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def until(moment: str) -> None:
    left = (datetime.fromisoformat(moment) - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(0.0, left))


async def history(client: httpx.AsyncClient, customer: Any) -> list[dict[str, Any]]:
    """Every ledger entry of the customer's, oldest first."""
    entries: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"before": before} if before else {})}
        page = await client.get("/v1/me/consents/history", headers=customer.headers, params=params)
        assert page.status_code == 200, page.text
        entries += page.json()["items"]
        before = page.json()["next"]
        if before is None:
            return entries[::-1]


async def kantara(client: httpx.AsyncClient, customer: Any, receipt_id: str) -> httpx.Response:
    return await client.get(f"/v1/me/consents/receipts/{receipt_id}", headers=customer.headers)


async def signed(client: httpx.AsyncClient, customer: Any, receipt_id: str) -> httpx.Response:
    return await client.get(
        f"/v1/me/consents/receipts/{receipt_id}",
        headers=customer.headers,
        params={"format": "jws"},
    )


async def test_every_receipt_the_service_issues_is_a_valid_kantara_v1_1_receipt(
    client, conn, vault, new_customer, settings
):
    customer = await new_customer()
    await keep(client, customer)
    partner, _ = await partner_key(conn)
    audiences = ["pos", "insights", "purchases", f"partner:{partner.partner_id}"]

    async def give(audience: str, *chosen: str, **body: Any) -> None:
        if audience == "purchases":
            answer = await client.put(
                "/v1/me/consents/purchases", headers=customer.headers, json=body
            )
            assert answer.status_code == 200, answer.text
        else:
            await grant(client, customer, audience, fields=list(chosen), **body)

    for audience in audiences:
        await give(audience, "product")  # given
        await give(audience, "product", "attributes", "note")  # changed
        await withdraw(client, customer, audience)  # withdrawn
        await give(audience, "attributes", expires_at=in_the_future(2))  # given, with an end
    await until(in_the_future(2.3))
    assert await retention.expire(conn, vault, settings.controller) >= len(audiences)  # expired

    entries = await history(client, customer)
    assert len(entries) == 5 * len(audiences)
    seen = set()
    for entry in entries:
        receipt = entry["receipt"]
        answer = await kantara(client, customer, receipt["receipt_id"])
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        document = answer.json()
        assert kantara_problems(document) == [], (receipt["state"], receipt["audience"], document)
        kind = receipt["recipient"]["kind"]
        how = document["collectionMethod"].split(" ", 1)[0]
        seen.add((kind, how))

        # derived from the ledger record
        recorded = datetime.fromisoformat(receipt["timestamp"])
        assert document["consentTimestamp"] == int(recorded.timestamp())
        assert document["consentReceiptID"] == receipt["receipt_id"]
        assert document["piiPrincipalId"] == customer.id
        assert document["language"] == "en"
        [controller] = document["piiControllers"]
        assert controller["piiController"] == receipt["controller"]["name"]
        assert (controller["email"], controller["phone"], controller["contact"]) == (
            settings.controller_email,
            settings.controller_phone,
            settings.controller_contact,
        )
        assert document["jurisdiction"] == settings.jurisdiction
        assert document["policyUrl"] == settings.policy_url
        [service] = document["services"]
        [purpose] = service["purposes"]
        assert purpose["purpose"].startswith(receipt["purposes"][0]["purpose"])
        for dpv in receipt["purposes"][0]["dpv"]:
            assert f"dpv:{dpv}" in purpose["purposeCategory"]
        assert purpose["piiCategory"] == [f"pd:{c}" for c in receipt["pii_categories"]]
        assert purpose["piiCategory"], "every receipt names the personal data it covers"
        assert purpose["consentType"] == "EXPLICIT"
        assert purpose["thirdPartyDisclosure"] is (kind == "partner")
        if kind == "partner":
            assert purpose["thirdPartyName"] == partner.name
        else:
            assert "thirdPartyName" not in purpose
        if receipt["state"] == "ConsentWithdrawn":
            assert purpose["termination"].startswith("Ended: withdrawn at ")
        elif receipt["state"] == "ConsentExpired":
            assert purpose["termination"].startswith("Ended: expired at ")
        elif receipt["expires_at"]:
            end = datetime.fromisoformat(receipt["expires_at"]).astimezone(UTC)
            assert (
                end.isoformat(timespec="seconds").replace("+00:00", "Z") in (purpose["termination"])
            )
        else:
            assert purpose["termination"] == "When the customer withdraws it"
        assert document["sensitive"] is False
        assert document["spiCat"] == []

    kinds = {"pos", "insights", "purchases", "partner"}
    assert seen == {(k, how) for k in kinds for how in ("Given", "Changed", "Withdrawn", "Ended")}


async def test_a_receipt_says_what_was_agreed_then_not_what_is_shared_now(client, new_customer):
    customer = await new_customer()
    await keep(client, customer)
    first = (await grant(client, customer, "pos", fields=["product"]))["receipt"]
    second = (await grant(client, customer, "pos", fields=["product", "note"]))["receipt"]
    ended = (await withdraw(client, customer, "pos"))["receipt"]

    given = (await kantara(client, customer, first["receipt_id"])).json()
    changed = (await kantara(client, customer, second["receipt_id"])).json()
    withdrawn = (await kantara(client, customer, ended["receipt_id"])).json()
    [given_purpose] = given["services"][0]["purposes"]
    [changed_purpose] = changed["services"][0]["purposes"]
    assert "Shown: which products, of all your preferences" in given_purpose["purpose"]
    assert given_purpose["piiCategory"] == ["pd:PurchasesAndSpendingHabit"]
    assert given_purpose["termination"] == "When the customer withdraws it"
    assert given["collectionMethod"].startswith("Given by the customer")
    assert "which products and your notes" in changed_purpose["purpose"]
    assert changed_purpose["piiCategory"] == ["pd:PurchasesAndSpendingHabit", "pd:Preference"]
    assert changed["collectionMethod"].endswith(f"replaces receipt {first['receipt_id']}")
    assert withdrawn["collectionMethod"].startswith("Withdrawn by the customer")
    assert withdrawn["consentReceiptID"] == ended["receipt_id"]
    # the same answer every time it is asked for
    assert (await kantara(client, customer, first["receipt_id"])).json() == given


async def test_another_customers_receipt_is_the_same_404_as_one_that_does_not_exist(
    client, new_customer
):
    owner, other = await new_customer(), await new_customer()
    await keep(client, owner)
    receipt_id = (await grant(client, owner, "pos", fields=["product"]))["receipt"]["receipt_id"]
    for ask in (kantara, signed):
        theirs = await ask(client, other, receipt_id)
        unknown = await ask(client, other, str(uuid.uuid4()))
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.headers["content-type"] == unknown.headers["content-type"] == PROBLEM_JSON
        assert theirs.json() == unknown.json()
        assert receipt_id not in theirs.text
    anonymous = await client.get(f"/v1/me/consents/receipts/{receipt_id}")
    assert anonymous.status_code == 401


# --- signed receipts ------------------------------------------------------------------------------


async def published_keys(client: httpx.AsyncClient) -> jwt.PyJWKSet:
    """The receipt keys, as anyone fetches them: over HTTP, without credentials."""
    answer = await client.get("/.well-known/jwks.json")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/jwk-set+json"
    return jwt.PyJWKSet.from_dict(answer.json())


def verified(token: str, keys: jwt.PyJWKSet) -> bytes:
    """The payload of a compact JWS that verifies under the published key its header names."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    key = keys[header["kid"]]
    payload: bytes = jwt.PyJWS().decode(token, key, algorithms=["EdDSA"])
    return payload


async def test_a_signed_receipt_verifies_with_the_published_key_and_holds_the_document(
    client, new_customer
):
    customer = await new_customer()
    await keep(client, customer)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]

    answer = await signed(client, customer, receipt_id)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/jose"
    token = answer.text
    assert token.count(".") == 2
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "EdDSA", "kid": header["kid"], "typ": "JOSE"}

    payload = verified(token, await published_keys(client))
    document = (await kantara(client, customer, receipt_id)).content
    assert payload == document
    assert kantara_problems(json.loads(payload)) == []


async def test_the_published_receipt_keys_are_public_ed25519_keys_and_nothing_private(client):
    answer = await client.get("/.well-known/jwks.json")
    assert answer.status_code == 200
    assert "public" in answer.headers["cache-control"]
    keys = answer.json()["keys"]
    assert keys
    for key in keys:
        assert set(key) == {"kty", "crv", "x", "kid", "use", "alg"}  # no "d": no private part
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        )
        assert len(base64.urlsafe_b64decode(key["x"] + "==")) == 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


async def test_a_signed_receipt_with_any_byte_changed_does_not_verify(client, new_customer):
    customer = await new_customer()
    await keep(client, customer)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]
    token = (await signed(client, customer, receipt_id)).text
    keys = await published_keys(client)
    key = keys[jwt.get_unverified_header(token)["kid"]]
    verified(token, keys)

    segments = [_unb64(segment) for segment in token.split(".")]
    tried = 0
    for which, segment in enumerate(segments):  # the header, the document, the signature
        for at in range(len(segment)):
            changed = bytearray(segment)
            changed[at] ^= 0x01
            parts = [
                _b64(bytes(changed)) if i == which else _b64(s) for i, s in enumerate(segments)
            ]
            with pytest.raises(jwt.InvalidTokenError):
                jwt.PyJWS().decode(".".join(parts), key, algorithms=["EdDSA"])
            tried += 1
    assert tried == sum(len(segment) for segment in segments)


def new_receipt_key(version: int) -> str:
    return f"{version}:{base64.urlsafe_b64encode(os.urandom(32)).decode()}"


async def test_a_receipt_signed_before_the_key_was_rotated_still_verifies_after(
    client, new_customer, settings: Settings
):
    customer = await new_customer()
    await keep(client, customer)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]
    before = (await signed(client, customer, receipt_id)).text
    old_kid = jwt.get_unverified_header(before)["kid"]

    # the operator puts a new key first and keeps the old one listed
    rotated = msgspec.structs.replace(
        settings, receipt_keys=f"{new_receipt_key(int(old_kid) + 1)},{settings.receipt_keys}"
    )
    async with serving(rotated) as after_rotation:
        keys = await published_keys(after_rotation)
        assert [key.key_id for key in keys.keys] == [str(int(old_kid) + 1), old_kid]
        assert verified(before, keys) == (await kantara(client, customer, receipt_id)).content

        after = (await signed(after_rotation, customer, receipt_id)).text
        new_kid = jwt.get_unverified_header(after)["kid"]
        assert new_kid == str(int(old_kid) + 1)
        assert verified(after, keys) == verified(before, keys)
        with pytest.raises(jwt.InvalidSignatureError):  # signed by the new key, not the old
            jwt.PyJWS().decode(after, keys[old_kid], algorithms=["EdDSA"])

    # a service that was never given the new key cannot vouch for what it signed
    with pytest.raises(KeyError):
        verified(after, await published_keys(client))


async def test_an_unknown_format_is_refused(client, new_customer):
    customer = await new_customer()
    await keep(client, customer, CHINOS)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]
    answer = await client.get(
        f"/v1/me/consents/receipts/{receipt_id}",
        headers=customer.headers,
        params={"format": "pdf"},
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
