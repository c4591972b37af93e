"""The committed OpenAPI document is the one the app serves."""

from __future__ import annotations

import difflib
import json

from prefs.app import create_app
from prefs.openapi import render
from tests.conftest import repo_root


def test_the_committed_openapi_document_matches_the_app(settings):
    committed = (repo_root() / "openapi" / "openapi.json").read_text()
    generated = render(create_app(settings))
    if committed != generated:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                "openapi/openapi.json (committed)",
                "the app",
                n=2,
            )
        )
        raise AssertionError(
            "openapi/openapi.json is out of date: run `uv run prefs openapi` and commit it.\n"
            + diff[:4000]
        )


async def test_the_running_service_serves_the_same_document(client):
    committed = (repo_root() / "openapi" / "openapi.json").read_text()
    served = await client.get("/schema/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads(committed)
