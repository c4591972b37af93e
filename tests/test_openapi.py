"""The committed OpenAPI document is the one the app serves."""

from __future__ import annotations

import difflib
import json
from typing import Any

from litestar.routes import HTTPRoute

from prefs.app import create_app
from prefs.openapi import render
from tests.support.paths import repo_root


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


def _body_field_names(schema: Any) -> set[str]:
    """Every property name anywhere in a request body's schema."""
    if isinstance(schema, list):
        return set().union(*(_body_field_names(item) for item in schema))
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {}))
    return names.union(*(_body_field_names(value) for value in schema.values()))


def test_no_dependency_shares_a_name_with_a_parameter_or_body_field(settings):
    """A dependency named like a field clients send reads as that field, and would shadow it."""
    app = create_app(settings)
    document = app.openapi_schema.to_schema()
    checked = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            dependencies = set(handler.resolve_dependencies())
            for method in handler.http_methods:
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is None:  # not documented (the schema endpoints themselves)
                    continue
                sent = {parameter["name"] for parameter in operation.get("parameters", [])}
                sent |= _body_field_names(operation.get("requestBody", {}))
                clashes = dependencies & sent
                assert not clashes, f"{method} {route.path_format}: {sorted(clashes)}"
                checked += 1
    documented = sum(len(operations) for operations in document["paths"].values())
    assert checked == documented  # every documented operation was checked


def _references(node: Any) -> set[str]:
    """The component schemas a part of the document names with ``$ref``."""
    if isinstance(node, list):
        return set().union(*(_references(item) for item in node))
    if not isinstance(node, dict):
        return set()
    found = set().union(*(_references(value) for value in node.values()))
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        found.add(ref.removeprefix("#/components/schemas/"))
    return found


def test_every_component_schema_is_used_by_some_operation(settings):
    """No loose schemas: each component is reachable from a path, directly or through another."""
    document = create_app(settings).openapi_schema.to_schema()
    schemas = document["components"]["schemas"]
    reachable = _references(document["paths"])
    frontier = set(reachable)
    while frontier:
        frontier = _references([schemas.get(name) for name in frontier]) - reachable
        reachable |= frontier
    assert sorted(set(schemas) - reachable) == []
    assert reachable <= set(schemas)  # and every reference resolves
