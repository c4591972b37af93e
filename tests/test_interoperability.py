"""Interoperability with real clients: every error the document declares is the problem+json
the service sends, a client generated from the committed document by openapi-python-client
(without a warning) drives a customer's journey, and Idempotency-Key takes the quoted Structured
Field form of the IETF draft (-07) as well as a bare token."""

from __future__ import annotations

import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from prefs.app import create_app
from tests.support.customer import CHINOS, keep
from tests.support.paths import repo_root
from tests.support.stores import FROM_HIGH_STREET

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemBody"}}}


def test_every_declared_error_body_is_problem_json(settings):
    document = create_app(settings).openapi_schema.to_schema()
    wrong = [
        f"{method.upper()} {path} {status}: {sorted(answer.get('content', {}))}"
        for path, operations in document["paths"].items()
        if not path.startswith("/health/")  # readiness answers 503 with its own report
        for method, operation in operations.items()
        for status, answer in operation["responses"].items()
        if int(status) >= 400 and answer.get("content") != PROBLEM
    ]
    assert wrong == []


# --- a generated client ------------------------------------------------------------------------

PACKAGE = "prefs_generated_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client openapi-python-client generates from openapi/openapi.json, imported."""
    where = tmp_path_factory.mktemp("client")
    config = where / "config.yaml"
    config.write_text("post_hooks: []\n")  # no formatter run on the generated code
    generator = Path(sys.executable).parent / "openapi-python-client"
    run = subprocess.run(
        [
            str(generator),
            "generate",
            "--path",
            str(repo_root() / "openapi" / "openapi.json"),
            "--meta",
            "none",
            "--config",
            str(config),
            "--output-path",
            str(where / PACKAGE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


async def test_a_generated_client_drives_a_customers_journey(generated, server, issuer):
    api, models = "api", _module("models")
    enrol = _module(f"{api}.customer.v1_me_enrol")
    create = _module(f"{api}.preferences.v1_me_preferences_create")
    read = _module(f"{api}.preferences.v1_me_preferences_preference_id_read")
    reorder = _module(f"{api}.reorders.v1_me_preferences_preference_id_reorders_create")
    cancel = _module(f"{api}.reorders.v1_me_reorders_reorder_id_cancel_cancel")
    token = issuer.mint(f"generated-{uuid.uuid4()}@example.test")
    client = generated.AuthenticatedClient(
        base_url=server.url, token=token, raise_on_unexpected_status=True
    )
    async with client:
        profile = await enrol.asyncio(client=client, body=None)  # its optional body: JSON null
        assert isinstance(profile, models.Profile), profile

        body = create.V1MePreferencesCreatePreferenceCreate.from_dict(CHINOS)
        kept = await create.asyncio(client=client, body=body)
        assert isinstance(kept, models.Preference), kept

        again = await read.asyncio(kept.id, client=client)
        assert isinstance(again, models.Preference), again
        assert again.note == CHINOS["note"] and again.product.name == "Classic Chino"
        unknown = await read.asyncio(uuid.uuid4(), client=client)
        assert isinstance(unknown, models.ProblemBody) and unknown.status == 404

        order = reorder.V1MePreferencesPreferenceIdReordersCreateReorderCreate.from_dict(
            {"quantity": 2, "fulfiller": FROM_HIGH_STREET}
        )
        placed = await reorder.asyncio(
            kept.id, client=client, body=order, idempotency_key=f'"{uuid.uuid4()}"'
        )
        assert isinstance(placed, models.Reorder) and placed.quantity == 2, placed

        cancelled = await cancel.asyncio(placed.id, client=client)
        assert isinstance(cancelled, models.Reorder), cancelled
        assert cancelled.state == models.ReorderState.CANCELLED
        unknown_reorder = await cancel.asyncio(uuid.uuid4(), client=client)
        assert isinstance(unknown_reorder, models.ProblemBody) and unknown_reorder.status == 404


# --- Idempotency-Key as a Structured Field string ------------------------------------------------


async def _reorder(client: Any, customer: Any, preference: str, key: bytes) -> Any:
    return await client.post(
        f"/v1/me/preferences/{preference}/reorders",
        headers={**customer.headers, "Idempotency-Key": key},
        json={"quantity": 1, "fulfiller": FROM_HIGH_STREET},
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (b'"k-{id}"', b"k-{id}"),
        (b"k-{id}", b'"k-{id}"'),
        (b'"k {id}"', b'"k {id}"'),
        (b'"k\\"{id}"', b'k"{id}'),
        (b'"k\\\\{id}"', b"k\\{id}"),
    ],
    ids=[
        "quoted then bare",
        "bare then quoted",
        "quoted with a space",
        "escaped quote",
        "escaped backslash",
    ],
)
async def test_a_quoted_idempotency_key_names_the_same_key_as_the_bare_one(
    client, new_customer, first, second
):
    customer = await new_customer()
    preference = (await keep(client, customer))["id"]
    key = uuid.uuid4().hex.encode()
    created = await _reorder(client, customer, preference, first.replace(b"{id}", key))
    assert created.status_code == 201, created.text
    replayed = await _reorder(client, customer, preference, second.replace(b"{id}", key))
    assert replayed.status_code == 201, replayed.text
    assert replayed.headers.get("idempotent-replayed") == "true"
    assert replayed.json()["id"] == created.json()["id"]


@pytest.mark.parametrize(
    "key",
    [b'"unterminated', b'"a"b"', b'""', b'"a\\b"', b'"' + b"a" * 201 + b'"', '"é"'.encode()],
)
async def test_a_malformed_quoted_idempotency_key_is_refused(client, new_customer, key):
    customer = await new_customer()
    preference = (await keep(client, customer))["id"]
    response = await _reorder(client, customer, preference, key)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    listed = await client.get("/v1/me/reorders", headers=customer.headers)
    assert listed.json()["items"] == []
