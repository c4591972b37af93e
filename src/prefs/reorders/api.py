"""HTTP for reorders: the customer's side under /v1/me, the partner's under /v1/partner."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from prefs import idempotency
from prefs.auth import api_key_guard, customer_guard
from prefs.credentials import Credential
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.errors import problems
from prefs.http import STRING_WHEN_SENT, constraints_of, declared_body
from prefs.observability import DISCLOSURES
from prefs.products import SharedPreference
from prefs.reorders import service
from prefs.reorders.schemas import (
    PartnerFeed,
    PartnerRef,
    PartnerReorder,
    PartnerReorderCreate,
    Reorder,
    ReorderCreate,
    ReorderList,
    StatusChange,
)

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=True,
        pattern=idempotency.HEADER_PATTERN,
        description=(
            "A unique key per reorder: 1 to 200 printable ASCII characters, bare or as a "
            'Structured Field string ("…"); both forms name the same key.'
        ),
        schema_extra=STRING_WHEN_SENT,
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Items per page")]
After = Annotated[
    str | None,
    QueryParameter(
        max_length=200, description="The `next` of the previous page", schema_extra=STRING_WHEN_SENT
    ),
]
Reference = Annotated[
    PartnerRef,
    PathParameter(
        **constraints_of(PartnerRef), description="The customer's reference for this partner"
    ),
]


async def _once(
    request: Request[Any, Any, Any],
    conn: Connection,
    vault: Vault,
    state: State,
    owner: str,
    idempotency_key: str | None,
    data: msgspec.Struct,
    create: idempotency.Create,
    replay: idempotency.Replay | None = None,
) -> Response[Any]:
    """Run a reorder-creating request once per Idempotency-Key; replays say so in a header."""
    key = idempotency.check_key(idempotency_key)
    fingerprint = idempotency.request_fingerprint(
        "POST", request.url.path, msgspec.json.encode(data)
    )
    answer = await idempotency.once(
        conn,
        vault,
        owner,
        key,
        fingerprint,
        state.settings.idempotency_ttl_seconds,
        create,
        replay,
    )
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=headers
    )


def _audience(partner: Credential) -> str:
    return f"partner:{partner.partner_id}"


class CustomerReordersController(Controller):
    path = "/v1/me"
    tags = ["reorders"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @post(
        "/preferences/{preference_id:uuid}/reorders",
        status_code=HTTP_201_CREATED,
        operation_class=declared_body(ReorderCreate),
        responses=problems(400, 401, 404, 409, 413, 415, 422, 503),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        state: State,
        customer_id: NamedDependency[UUID],
        preference_id: FromPath[UUID],
        data: JSONBody[ReorderCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Reorder]:
        """Reorder a preference (even a discontinued one) from the store or a consented partner."""

        async def create() -> tuple[UUID, int, bytes]:
            reorder = await service.create_for_customer(
                conn, vault, customer_id, preference_id, data
            )
            return customer_id, HTTP_201_CREATED, msgspec.json.encode(reorder)

        return await _once(
            request, conn, vault, state, f"customer:{customer_id}", idempotency_key, data, create
        )

    @get("/reorders", responses=problems(400, 401, 404, 503))
    async def list_all(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        limit: Limit = 50,
        after: After = None,
    ) -> ReorderList:
        """The customer's reorders and their states, newest first."""
        return await service.list_for_customer(conn, vault, customer_id, limit, after)

    @post(
        "/reorders/{reorder_id:uuid}/cancel",
        status_code=HTTP_200_OK,
        responses=problems(400, 401, 404, 409, 503),
    )
    async def cancel(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        reorder_id: FromPath[UUID],
    ) -> Reorder:
        """Cancel a reorder nobody has accepted yet, or decline a partner's proposal (409 once
        accepted)."""
        return await service.cancel(conn, vault, customer_id, reorder_id)

    @post(
        "/reorders/{reorder_id:uuid}/confirm",
        status_code=HTTP_200_OK,
        responses=problems(400, 401, 404, 409, 503),
    )
    async def confirm(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        reorder_id: FromPath[UUID],
    ) -> Reorder:
        """Confirm a partner's proposal: it becomes a reorder the partner may accept."""
        return await service.confirm(conn, vault, customer_id, reorder_id)


class PartnerController(Controller):
    path = "/v1/partner"
    tags = ["partner"]
    guards = [api_key_guard("partner")]
    security = [{"api_key": []}]

    @get("/reorders", responses=problems(400, 401, 503))
    async def feed(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        state: State,
        credential: NamedDependency[Credential],
        limit: Limit = 50,
        after: After = None,
    ) -> PartnerFeed:
        """Reorders addressed to this partner, oldest first; poll again with `next`."""
        page = await service.feed(
            conn, vault, credential, after, limit, state.settings.partner_accepted_window_days
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
        state: State,
        credential: NamedDependency[Credential],
        reorder_id: FromPath[UUID],
        data: JSONBody[StatusChange],
    ) -> PartnerReorder:
        """accepted → fulfilled, or declined; repeating the current state is a no-op."""
        return await service.set_status(conn, credential, reorder_id, data.state)

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
        state: State,
        credential: NamedDependency[Credential],
        data: JSONBody[PartnerReorderCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PartnerReorder]:
        """Propose a reorder to a customer who lets this partner see that preference; it waits
        (`proposed`) until the customer confirms it (409 while too many are waiting)."""

        async def create() -> tuple[UUID, int, bytes]:
            limits = service.ProposalLimits(
                state.settings.partner_open_proposals,
                state.settings.partner_proposal_max_quantity,
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
                state.settings.partner_accepted_window_days,
                customer_id,
                answer,
            )
            DISCLOSURES.labels("partner").inc(disclosed)
            return shown

        return await _once(
            request,
            conn,
            vault,
            state,
            _audience(credential),
            idempotency_key,
            data,
            create,
            replay,
        )

    @get("/customers/{ref:str}/preferences", responses=problems(400, 401, 404, 503))
    async def preferences(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        credential: NamedDependency[Credential],
        ref: Reference,
    ) -> list[SharedPreference]:
        """A consenting customer's granted preferences (404 without a live grant)."""
        shown = await service.partner_preferences(conn, vault, credential, ref)
        DISCLOSURES.labels("partner").inc()
        return shown
