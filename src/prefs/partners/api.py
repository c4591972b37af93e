"""HTTP for partners: the directory customers choose from (GET /v1/partners), and what a
partner does with its key under /v1/partner."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.openapi.spec import (
    Reference as SchemaReference,
)
from litestar.params import FromPath, JSONBody, PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from prefs.auth import api_key_guard, customer_guard
from prefs.credentials import Credential
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.grants import partner_audience
from prefs.http import After, IdempotencyKey, Limit, constraints_of, declared_body, once_per_key
from prefs.observability import DISCLOSURES
from prefs.partners import service
from prefs.partners.schemas import (
    PartnerDirectory,
    PartnerFeed,
    PartnerPreferences,
    PartnerRef,
    PartnerReorder,
    PartnerReorderCreate,
    StatusChange,
    StatusChanged,
)
from prefs.problems import problems
from prefs.settings import Settings

# API v1.0 answered a customer's preferences to a partner as a bare array; a partner that has
# not moved to {items, next} yet asks for it by this media type (docs/product.md, changelog).
V1_0_ARRAY = "application/vnd.prefs.v1.0+json"


def _quality(accept: str, media_type: str) -> float:
    """The q an Accept header gives ``media_type``: that of its most specific matching range
    (RFC 9110 12.5.1; media types are case-insensitive), 0 when none matches."""
    kind = media_type.split("/")[0]
    found: tuple[int, float] = (-1, 0.0)
    for accepted in accept.lower().split(","):
        name, *parameters = (part.strip() for part in accepted.split(";"))
        specificity = {media_type: 2, f"{kind}/*": 1, "*/*": 0}.get(name)
        if specificity is None or specificity <= found[0]:
            continue
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0  # nan and out of range: not a weight
        found = (specificity, q)
    return found[1]


def wants_v1_0_array(accept: str) -> bool:
    """Whether Accept prefers API v1.0's array to JSON (a tie, ``*/*`` included, is JSON)."""
    return _quality(accept, V1_0_ARRAY) > _quality(accept, "application/json")


@dataclass
class AlsoAsBareArray(Operation):
    """OpenAPI: the preferences answer API v1.0's bare array for its media type."""

    def __post_init__(self) -> None:
        assert self.responses is not None
        answer = self.responses["200"]
        assert isinstance(answer, OpenAPIResponse) and answer.content is not None
        answer.content[V1_0_ARRAY] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.ARRAY,
                items=SchemaReference(ref="#/components/schemas/SharedPreference"),
                description="API v1.0's shape, kept for partners not yet reading `items`",
            )
        )


class PartnersController(Controller):
    path = "/v1/partners"
    tags = ["partners"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(401, 503))
    async def directory(self, conn: NamedDependency[Connection]) -> PartnerDirectory:
        """The partners a customer can grant consent to."""
        return PartnerDirectory(items=await service.directory(conn))


Reference = Annotated[
    PartnerRef,
    PathParameter(
        **constraints_of(PartnerRef), description="The customer's reference for this partner"
    ),
]


class PartnerController(Controller):
    path = "/v1/partner"
    tags = ["partner"]
    guards = [api_key_guard("partner")]
    security = [{"api_key": []}]

    @get("/reorders", responses=problems(400, 401, 410, 503))
    async def feed(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        credential: NamedDependency[Credential],
        limit: Limit = 50,
        after: After = None,
    ) -> PartnerFeed:
        """Reorders addressed to this partner, oldest first; poll again with `next`."""
        page = await service.feed(
            conn, vault, credential, after, limit, settings.partner_accepted_window_days
        )
        DISCLOSURES.labels("partner").inc(sum(item.item is not None for item in page.items))
        return page

    @post(
        "/reorders/{reorder_id:uuid}/status",
        status_code=HTTP_200_OK,
        operation_class=declared_body(StatusChange),
        responses=problems(400, 401, 404, 409, 413, 415, 503),
    )
    async def set_status(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        credential: NamedDependency[Credential],
        reorder_id: FromPath[UUID],
        data: JSONBody[StatusChange],
    ) -> StatusChanged:
        """accepted → fulfilled, or declined; repeating the current state is a no-op. Answers
        the reorder as the feed shows it now (accepted: with its item) and `previous_state`."""
        changed = await service.set_status(
            conn, vault, credential, reorder_id, data.state, settings.partner_accepted_window_days
        )
        DISCLOSURES.labels("partner").inc(changed.item is not None)
        return changed

    @post(
        "/reorders",
        status_code=HTTP_201_CREATED,
        operation_class=declared_body(PartnerReorderCreate),
        responses=problems(400, 401, 404, 409, 413, 415, 422, 503),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        credential: NamedDependency[Credential],
        data: JSONBody[PartnerReorderCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PartnerReorder]:
        """Propose a reorder to a customer who lets this partner see that preference; it waits
        (`proposed`) until the customer confirms it (409 while too many are waiting)."""

        async def create() -> tuple[UUID, int, bytes]:
            limits = service.ProposalLimits(
                settings.partner_open_proposals,
                settings.partner_proposal_max_quantity,
            )
            customer_id, reorder = await service.create_for_partner(
                conn, vault, credential, data, limits
            )
            return customer_id, HTTP_201_CREATED, msgspec.json.encode(reorder)

        async def replay(customer_id: UUID, answer: bytes) -> bytes:
            shown, disclosed = await service.replay_for_partner(
                conn,
                vault,
                credential,
                data,
                settings.partner_accepted_window_days,
                customer_id,
                answer,
            )
            DISCLOSURES.labels("partner").inc(disclosed)
            return shown

        assert credential.partner_id is not None  # every partner key names its partner
        return await once_per_key(
            request,
            conn,
            vault,
            settings,
            partner_audience(credential.partner_id),
            idempotency_key,
            data,
            create,
            replay,
        )

    @get(
        "/customers/{ref:str}/preferences",
        operation_class=AlsoAsBareArray,
        responses={
            200: ResponseSpec(
                PartnerPreferences,
                description="The granted fields of the granted preferences, in rank order",
                generate_examples=False,
            ),
            **problems(400, 401, 404, 503),
        },
    )
    async def preferences(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        credential: NamedDependency[Credential],
        ref: Reference,
    ) -> Response[Any]:
        """A consenting customer's granted preferences (404 without a live grant), as
        `{items, next}`; `Accept: application/vnd.prefs.v1.0+json` still answers API v1.0's
        bare array."""
        shown = await service.partner_preferences(conn, vault, credential, ref)
        DISCLOSURES.labels("partner").inc()
        if wants_v1_0_array(request.headers.get("accept", "")):
            return Response(shown, media_type=V1_0_ARRAY, headers={"Vary": "Accept"})
        return Response(PartnerPreferences(items=shown), headers={"Vary": "Accept"})
