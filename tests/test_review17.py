"""Review of issue 17 (OIDC sign-in, Kantara receipts, QR codes): each test is a problem found,
failing until it is fixed."""

from __future__ import annotations

import msgspec
import pytest

from prefs.settings import Settings
from tests.support.customer import grant, keep
from tests.support.servers import serving


async def _receipt(client, customer, receipt_id, fmt="json"):
    return await client.get(
        f"/v1/me/consents/receipts/{receipt_id}", headers=customer.headers, params={"format": fmt}
    )


async def test_a_receipt_keeps_the_policy_and_jurisdiction_in_force_when_consent_was_given(
    client, new_customer, settings: Settings
):
    """A signed receipt attests what the customer agreed to. Today policyUrl and jurisdiction are
    read from the settings when the receipt is asked for, so after the operator publishes a new
    policy (README: "put the policy's version in it"), every old receipt -- signed afresh -- says
    the customer agreed to the new policy, which they never saw."""
    customer = await new_customer()
    await keep(client, customer)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]
    then = (await _receipt(client, customer, receipt_id)).json()

    later = msgspec.structs.replace(
        settings, policy_url="https://shop.example/privacy/v2", jurisdiction="IE"
    )
    async with serving(later) as after_policy_change:
        now = (await _receipt(after_policy_change, customer, receipt_id)).json()
    assert now["policyUrl"] == then["policyUrl"]
    assert now["jurisdiction"] == then["jurisdiction"]


@pytest.mark.parametrize("fmt", ["json", "jws"])
async def test_a_receipt_is_not_kept_in_caches(client, new_customer, fmt):
    """A receipt is personal data (principal id, who it is shared with) for download, like the
    export (rights/api.py sends no-store); the receipt answers carry no Cache-Control at all."""
    customer = await new_customer()
    await keep(client, customer)
    receipt_id = (await grant(client, customer, "pos", fields=["product"]))["receipt"]["receipt_id"]
    answer = await _receipt(client, customer, receipt_id, fmt)
    assert answer.status_code == 200
    assert "no-store" in answer.headers.get("cache-control", "")


async def test_the_page_is_served_at_the_configured_redirect_path(settings: Settings):
    """PREFS_OIDC_REDIRECT_PATH is documented as where the provider sends customers back, but only
    / serves the page: any other path answers the returning customer (code and state in the
    address) with a 404, so sign-in can never complete."""
    configured = msgspec.structs.replace(
        settings,
        oidc_issuer="http://127.0.0.1:9",
        oidc_client_id="prefs-page",
        oidc_redirect_path="/signed-in",
    )
    async with serving(configured) as http:
        back = await http.get("/signed-in", params={"code": "c", "state": "s"})
    assert back.status_code == 200
    assert back.headers["content-type"].startswith("text/html")
    assert 'data-oidc-redirect-path="/signed-in"' in back.text
