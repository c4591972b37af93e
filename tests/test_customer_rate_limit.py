"""A scripted or runaway client cannot hammer the customer's routes: each bearer token gets a
number of requests a minute, then 429 problem+json with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from prefs.app import create_app
from prefs.auth import DevIssuer
from prefs.settings import Settings, SettingsError, load
from tests.support.customer import bearer
from tests.support.database import Database
from tests.support.servers import LiveServer

PER_MINUTE = 10


@pytest.fixture(scope="module")
def limited_server(settings: Settings, database: Database) -> Iterator[LiveServer]:
    limited = load(
        {
            "PREFS_DATA_DIR": str(settings.data_dir),
            **database.app_env,
            "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": str(PER_MINUTE),
        }
    )
    with LiveServer(create_app(limited)) as live:
        yield live


@pytest.fixture
async def limited(limited_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=limited_server.url, timeout=30) as http:
        yield http


async def test_a_customer_past_the_limit_gets_429_and_another_customer_does_not(
    limited: httpx.AsyncClient, issuer: DevIssuer
) -> None:
    hammering = bearer(issuer.mint("rate-limited-hammering"))
    calm = bearer(issuer.mint("rate-limited-calm"))
    answers = [
        (await limited.get("/v1/me", headers=hammering)).status_code for _ in range(PER_MINUTE)
    ]
    assert 429 not in answers

    refused = await limited.get("/v1/me", headers=hammering)
    assert refused.status_code == 429
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    refused_write = await limited.post("/v1/me", headers=hammering)
    assert refused_write.status_code == 429

    assert (await limited.get("/v1/me", headers=calm)).status_code != 429


async def test_routes_other_than_the_customers_are_not_counted(
    limited: httpx.AsyncClient, issuer: DevIssuer
) -> None:
    for _ in range(PER_MINUTE + 5):
        assert (
            await limited.get("/v1/partners", headers=bearer(issuer.mint("x")))
        ).status_code != 429
        assert (await limited.get("/health/live")).status_code == 200


def test_the_limit_cannot_be_set_below_ten(settings: Settings, database: Database) -> None:
    with pytest.raises(SettingsError, match="PREFS_CUSTOMER_REQUESTS_PER_MINUTE"):
        load(
            {
                "PREFS_DATA_DIR": str(settings.data_dir),
                **database.app_env,
                "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": "3",
            }
        )
