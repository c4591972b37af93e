"""The committed OpenAPI document, rendered deterministically from the app."""

from __future__ import annotations

import json

from litestar import Litestar


def render(app: Litestar) -> str:
    """The app's OpenAPI schema as stable, sorted, indented JSON."""
    return json.dumps(app.openapi_schema.to_schema(), indent=2, sort_keys=True) + "\n"
