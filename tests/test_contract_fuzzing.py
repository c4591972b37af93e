"""Contract fuzzing: schemathesis drives the live service from the committed OpenAPI document.

Every operation is called with generated valid and invalid data (examples, coverage and fuzzing
phases), then in generated call sequences (the stateful phase, with links schemathesis infers
from the response schemas), each time with a real credential of the role the route serves: a
customer bearer token for ``/v1/me*`` and ``/v1/partners``, a ``pos_`` key for the till, a
``ptn_`` key for the partner feed and an ``ins_`` key for insights. Every answer must pass the
checks below; the run is bounded so it takes a minute or two.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Flaky
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    unsupported_method,
    use_after_free,
)

from prefs import credentials, db
from prefs.auth import DevIssuer
from prefs.consents.service import MAX_CONSENT_YEARS
from prefs.crypto import Vault
from prefs.cursors import seal_text, seal_time
from prefs.partners.service import encode_feed_cursor
from prefs.stores.service import DIRECTORY_CURSOR, encode_queue_cursor
from tests.support.customer import CHINOS, bearer
from tests.support.database import Database
from tests.support.paths import repo_root
from tests.support.servers import LiveServer
from tests.support.stores import in_directory

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    ignored_auth,
    use_after_free,
    missing_required_header,
    unsupported_method,
]
MAX_EXAMPLES = 15
HYPOTHESIS_SETTINGS = hypothesis.settings(
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
    database=None,
    derandomize=True,
)


CONFIG = schemathesis.Config.from_dict(
    {
        "seed": 20_240_607,
        "generation": {"max-examples": MAX_EXAMPLES, "mode": "all"},
        "checks": {
            # Valid data may still meet state no schema can describe: a stale If-Match (412) or an
            # Idempotency-Key already used with another body (422), like the default 409.
            "positive_data_acceptance": {
                "expected-statuses": [
                    "2xx",
                    "3xx",
                    "401",
                    "403",
                    "404",
                    "409",
                    "412",
                    "422",
                    "429",
                    "5xx",
                ]
            },
            # A missing If-Match is 428 Precondition Required (RFC 6585), not a 400.
            "missing_required_header": {
                "expected-statuses": ["400", "401", "403", "406", "415", "422", "428"]
            },
        },
    }
)
schema = schemathesis.openapi.from_path(repo_root() / "openapi" / "openapi.json", config=CONFIG)

ROLE_BY_PATH = (  # which credential each part of the API takes
    (re.compile(r"^/v1/(me|partners)(/|$)"), "customer"),
    (re.compile(r"^/v1/pos/"), "till"),
    (re.compile(r"^/v1/partner/"), "partner"),
    (re.compile(r"^/v1/insights/"), "insights"),
)
FUZZ_STORE = "fuzz-store"  # the till's store, also one customers can reorder from
CREDENTIALS: dict[str, str] = {}  # role -> bearer credential, filled by the `roles` fixture
SEALING: dict[str, Any] = {}  # the vault and the partner's id, to mint cursors: likewise


def minted_cursor(path: str, base_url: str) -> str:
    """A page cursor as the service mints it for the caller of ``path`` (sealed for its owner:
    the customer's id changes when the fuzzer erases and enrols them again)."""
    vault: Vault = SEALING["vault"]
    # a feed's cursor at its start, as the service hands out for a list with nothing in it yet
    # (a position names a place in one numbering of the list: migration 0015)
    if path.startswith("/v1/partner/"):
        return encode_feed_cursor(vault, SEALING["partner_id"], 0)
    if path == "/v1/pos/reorders":
        return encode_queue_cursor(vault, FUZZ_STORE, 0)
    if path == "/v1/stores":
        return seal_text(vault.page_cursors, "stores", DIRECTORY_CURSOR, FUZZ_STORE)
    me = httpx.get(f"{base_url}/v1/me", headers=bearer(CREDENTIALS["customer"]))
    customer_id = uuid.UUID(me.json()["id"]) if me.is_success else uuid.uuid4()
    kind = "access-log" if path == "/v1/me/access-log" else "reorders"
    return seal_time(vault.page_cursors, kind, customer_id, datetime.now(UTC), uuid.uuid4())


PENDING = "pending-credential-of-"


@schema.auth(refresh_interval=None)
class RoleCredential:
    """The live credential of the role an operation serves (explicit auth, as far as checks go).

    Coverage cases are built when pytest collects the test, before any credential exists: they
    carry a placeholder that ``with_live_credential`` swaps for the real one just before the call.
    """

    def get(self, case: Any, context: Any) -> str | None:
        for pattern, role in ROLE_BY_PATH:
            if pattern.match(case.path):
                return CREDENTIALS.get(role, PENDING + role)
        return None

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def with_live_credential(case: Any) -> Any:
    value = (case.headers or {}).get("Authorization", "")
    if value.startswith(f"Bearer {PENDING}"):
        case.headers["Authorization"] = (
            f"Bearer {CREDENTIALS[value.removeprefix(f'Bearer {PENDING}')]}"
        )
    return case


def with_live_state(case: Any, base_url: str) -> Any:
    """Valid data as the service means it, where no schema can say so.

    A page cursor is a token the service minted, a consent or a checkout code names the
    customer's own preferences, a consent names fields unless it is for `purchases`, a sale happened
    between 2000 and today, and a consent expires in the future (within its limit): a positive case gets such
    values (only where it drew others), so that refusing it would be a real fault.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if case.query and case.query.get("after"):
        case.query["after"] = minted_cursor(case.path, base_url)
    body = case.body if isinstance(case.body, dict) else {}
    if isinstance(body.get("preferences"), list):
        listed = httpx.get(f"{base_url}/v1/me/preferences", headers=bearer(CREDENTIALS["customer"]))
        ids = [item["id"] for item in listed.json()["items"]] if listed.is_success else []
        body["preferences"] = ids[: len(body["preferences"])] or "all"
    if case.method == "PUT" and case.path.startswith("/v1/me/consents/"):
        # fields are required for audiences shown something and refused for `purchases`: the
        # body's rule depends on the path, which one schema for the route cannot say (and the
        # body may be left out only for `purchases`)
        if (case.path_parameters or {}).get("audience") == "purchases":
            body.pop("fields", None)
            body.pop("preferences", None)
        elif body is case.body:
            body.setdefault("fields", ["product"])
        else:
            case.body = {"fields": ["product"]}
    for item in body.get("items") or []:  # a sale's day lies between 2000 and today
        with contextlib.suppress(TypeError, ValueError, AttributeError, KeyError):
            day = datetime.fromisoformat(item["purchased_on"]).date()
            if not datetime(2000, 1, 1).date() <= day <= datetime.now(UTC).date():
                item["purchased_on"] = datetime.now(UTC).date().isoformat()
    expires = body.get("expires_at")
    with contextlib.suppress(TypeError, ValueError):
        now = datetime.now(UTC)
        ahead = datetime.fromisoformat(expires) - now
        if not timedelta(minutes=1) < ahead < timedelta(days=365 * MAX_CONSENT_YEARS - 1):
            body["expires_at"] = (now + timedelta(days=30)).isoformat()
    return case


@pytest.fixture(scope="module")
async def roles(
    server: LiveServer, database: Database, issuer: DevIssuer, vault: Vault
) -> dict[str, str]:
    """A customer with preferences who granted the till, the partner and insights; their keys."""
    conn = await db.connect(database.url)
    try:
        _, till = await credentials.create(
            conn, "pos", "Fuzzing till", store=await in_directory(conn, FUZZ_STORE)
        )
        partner, partner_key = await credentials.create(
            conn, "partner", "Fuzzing tailor", description="Makes trousers again"
        )
        _, insights = await credentials.create(conn, "insights", "Fuzzing merchandising")
    finally:
        await conn.close()
    token = issuer.mint(f"fuzz-{uuid.uuid4()}@example.test", 3 * 3600)
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(token), timeout=30) as http:
        enrolled = await http.post("/v1/me", json={"card": "6006 4912 3456 7890"})
        assert enrolled.status_code == 201, enrolled.text
        for note in ("The old cut.", "Second pair, darker."):
            created = await http.post("/v1/me/preferences", json={**CHINOS, "note": note})
            assert created.status_code == 201, created.text
        for audience in ("pos", f"partner:{partner.partner_id}", "insights"):
            granted = await http.put(
                f"/v1/me/consents/{audience}", json={"fields": ["product", "attributes", "note"]}
            )
            assert granted.status_code == 200, granted.text
    CREDENTIALS.update(customer=token, till=till, partner=partner_key, insights=insights)
    SEALING.update(vault=vault, partner_id=partner.partner_id)
    return dict(CREDENTIALS)


@schema.parametrize()
@HYPOTHESIS_SETTINGS
def test_every_operation_answers_by_its_contract(
    case: Any, server: LiveServer, roles: dict[str, str]
) -> None:
    case = with_live_state(with_live_credential(case), server.url)
    case.call_and_validate(base_url=server.url, checks=CHECKS)


def test_call_sequences_answer_by_the_contract(server: LiveServer, roles: dict[str, str]) -> None:
    failures: list[FailureGroup] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            with_live_state(case, server.url)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": server.url}

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            try:
                case.validate_response(
                    response, checks=CHECKS, transport_kwargs=kwargs or None, recorder=self.recorder
                )
            except FailureGroup as failure:
                failures.append(failure)
                raise

    # Sequences run against the live server's changing state: which calls are possible depends
    # on what earlier answers returned, so Hypothesis may find a replay "flaky". Failures are
    # recorded as they happen (as the schemathesis CLI does) and not shrunk.
    with contextlib.suppress(Flaky):
        Workflow.run(
            settings=hypothesis.settings(
                HYPOTHESIS_SETTINGS,
                max_examples=MAX_EXAMPLES,
                stateful_step_count=8,
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
            )
        )
    if failures:
        raise failures[0]
