"""The benchmark's peer (loadtests/peer_app.py, FastAPI + SQLAlchemy) answers a till exactly as
prefs does and logs the visit as prefs does: the benchmark compares like with like."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.support.customer import bearer, checkout_code, grant
from tests.support.paths import repo_root
from tests.support.till import fresh_card, look_up, shopper, till_key, visits


@pytest.fixture(scope="module")
def peer_module() -> Iterator[ModuleType]:
    """loadtests/peer_app.py as the module `peer_app`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(repo_root() / "loadtests"))
        import peer_app

        yield peer_app
    sys.modules.pop("peer_app", None)


@pytest.fixture
async def peer(peer_module: ModuleType, database, vault) -> AsyncIterator[httpx.AsyncClient]:
    """The peer on the session's database and keys, in process (no server)."""
    app = peer_module.create_app(database.url, vault)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://peer", timeout=30) as http:
        yield http
    await app.state.engine.dispose()


def without_disclosure_id(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["disclosure_id"]
    return {name: value for name, value in answer.items() if name != "disclosure_id"}


def without_identity(visit: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in visit.items() if name not in ("disclosure_id", "at")}


@pytest.mark.parametrize(
    ("fields", "some_preferences"),
    [
        (["product", "attributes", "note"], False),
        (["product", "note"], True),
        (["attributes"], False),
    ],
)
async def test_the_peer_shows_a_till_what_prefs_shows_and_logs_it_alike(
    client, peer, conn, new_customer, vault, fields, some_preferences
):
    customer, card, (chinos, _, boots) = await shopper(new_customer, client)
    chosen = [boots["id"], chinos["id"]] if some_preferences else "all"
    await grant(client, customer, fields=fields, preferences=chosen)
    till, key = await till_key(conn)

    ours = await look_up(client, key, card=card)
    theirs = await peer.post("/v1/pos/lookup", headers=bearer(key), json={"card": card})

    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert without_disclosure_id(theirs.json()) == without_disclosure_id(ours.json())
    logged = await visits(conn, vault, customer.id)
    assert {str(v["disclosure_id"]) for v in logged} == {
        ours.json()["disclosure_id"],
        theirs.json()["disclosure_id"],
    }
    first, second = (without_identity(v) for v in logged)
    assert first == second
    assert first["credential_id"] == till.id


async def test_the_peer_answers_a_checkout_code_as_prefs_does(client, peer, conn, new_customer):
    customer, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, customer, fields=["product", "attributes"]))["code"]
    _, key = await till_key(conn)

    theirs = await peer.post("/v1/pos/lookup", headers=bearer(key), json={"code": code})
    ours = await look_up(client, key, code=code)

    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert without_disclosure_id(theirs.json()) == without_disclosure_id(ours.json())
    assert ours.json()["via"] == "code"


async def test_the_peer_refuses_what_prefs_refuses_with_the_same_404(
    client, peer, conn, new_customer
):
    _, never_granted_card, _ = await shopper(new_customer, client)
    coded, _, _ = await shopper(new_customer, client)
    code = (await checkout_code(client, coded))["code"]
    _, key = await till_key(conn)
    _, other_store = await till_key(conn)
    assert (await look_up(client, other_store, code=code)).status_code == 200  # bound there

    for body in ({"card": fresh_card()}, {"card": never_granted_card}, {"code": code}):
        ours = await look_up(client, key, **body)
        theirs = await peer.post("/v1/pos/lookup", headers=bearer(key), json=body)
        assert ours.status_code == theirs.status_code == 404, body
        assert theirs.headers["content-type"] == ours.headers["content-type"]
        assert theirs.json() == ours.json()

    unknown = await peer.post(
        "/v1/pos/lookup", headers=bearer("pos_nope"), json={"card": "1234567"}
    )
    assert unknown.status_code == 401
