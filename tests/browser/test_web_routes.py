"""The page's routes: the demo sign-in exists in development only (no browser needed)."""

from __future__ import annotations

import msgspec
import pytest

from prefs.app import create_app
from prefs.settings import Settings, load


@pytest.fixture
def development(tmp_path) -> Settings:
    return load(
        {"PREFS_DATA_DIR": str(tmp_path), "PREFS_DATABASE_URL": "postgresql://unused/prefs"}
    )


def paths(settings: Settings) -> set[str]:
    return {route.path for route in create_app(settings).routes}


def test_development_offers_the_demo_sign_in_beside_the_page(development):
    assert {"/", "/store", "/static/{file_path:path}", "/dev/demo-session"} <= paths(development)


def test_production_serves_the_page_without_the_demo_sign_in(development):
    production = msgspec.structs.replace(development, env="production", dev_issuer=False)
    served = paths(production)
    assert {"/", "/static/{file_path:path}"} <= served
    assert not any(path.startswith("/dev") for path in served)


def test_neither_the_page_nor_the_demo_sign_in_is_in_the_api_schema(development):
    schema = create_app(development).openapi_schema.to_schema()
    assert not [
        path
        for path in schema["paths"]
        if path in ("/", "/store") or path.startswith(("/dev", "/static"))
    ]
