"""HTTP for the customer's reorders under /v1/me (partners' side: prefs.partners.api)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from prefs.auth import customer_guard
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.http import After, IdempotencyKey, Limit, declared_body, once_per_key
from prefs.problems import problems
from prefs.reorders import service
from prefs.reorders.schemas import Reorder, ReorderCreate, ReorderList
from prefs.settings import Settings

# What the service checks of `fields` beyond its type, by fulfiller: a store needs the product;
# a partner sees what the customer's consent allows, so a partner reorder names no fields.
FIELDS_BY_FULFILLER = {
    "allOf": [
        {
            "if": {"properties": {"fulfiller": {"pattern": "^store:"}}},
            "then": {"properties": {"fields": {"contains": {"const": "product"}}}},
        },
        {
            "if": {"properties": {"fulfiller": {"pattern": "^partner:"}}},
            "then": {"not": {"required": ["fields"]}},
        },
    ]
}


class CustomerReordersController(Controller):
    path = "/v1/me"
    tags = ["reorders"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @post(
        "/preferences/{preference_id:uuid}/reorders",
        status_code=HTTP_201_CREATED,
        operation_class=declared_body(ReorderCreate, refine=FIELDS_BY_FULFILLER),
        responses=problems(400, 401, 404, 409, 413, 415, 422, 503),
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        preference_id: FromPath[UUID],
        data: JSONBody[ReorderCreate],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[Reorder]:
        """Reorder a preference (even a discontinued one) from the store or a consented partner."""

        async def create() -> tuple[UUID, int, bytes]:
            reorder = await service.create_for_customer(
                conn, vault, customer_id, preference_id, data, settings.store_waiting_reorders
            )
            return customer_id, HTTP_201_CREATED, msgspec.json.encode(reorder)

        return await once_per_key(
            request, conn, vault, settings, f"customer:{customer_id}", idempotency_key, data, create
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
