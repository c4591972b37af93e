"""HTTP for stores: the directory customers pick a store from (GET /v1/stores), and a store's
queue of reorders as its tills read and move them (under /v1/pos/reorders)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK

from prefs.auth import api_key_guard, customer_guard
from prefs.credentials import Credential
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.http import STRING_WHEN_SENT, After, Limit, declared_body
from prefs.observability import DISCLOSURES
from prefs.problems import problems
from prefs.stores import service
from prefs.stores.schemas import StoreDirectory, StoreQueue, StoreReorder, StoreStatusChange
from prefs.text import SINGLE_LINE

Search = Annotated[
    str | None,
    QueryParameter(
        max_length=100,
        pattern=SINGLE_LINE,
        description="The start of a store's id, or words of its name or address",
        schema_extra=STRING_WHEN_SENT,
    ),
]


class StoresController(Controller):
    path = "/v1/stores"
    tags = ["stores"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(400, 401, 503))
    async def directory(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        q: Search = None,
        limit: Limit = 50,
        after: After = None,
    ) -> StoreDirectory:
        """The open stores a customer can reorder from, by name; `q` narrows the list."""
        return await service.directory(conn, vault, q, limit, after)


class StoreQueueController(Controller):
    path = "/v1/pos/reorders"
    tags = ["till"]
    guards = [api_key_guard("pos")]
    security = [{"api_key": []}]

    @get("/", responses=problems(400, 401, 410, 503))
    async def queue(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        credential: NamedDependency[Credential],
        limit: Limit = 50,
        after: After = None,
    ) -> StoreQueue:
        """Reorders customers addressed to this till's store, oldest change first: each appears
        when placed and again whenever its state changes. Poll again with `next`."""
        page = await service.queue(conn, vault, credential, after, limit)
        DISCLOSURES.labels("pos").inc(sum(item.item is not None for item in page.items))
        return page

    @post(
        "/{reorder_id:uuid}/status",
        status_code=HTTP_200_OK,
        operation_class=declared_body(StoreStatusChange),
        responses=problems(400, 401, 404, 409, 413, 415, 503),
    )
    async def set_status(
        self,
        conn: NamedDependency[Connection],
        credential: NamedDependency[Credential],
        reorder_id: FromPath[UUID],
        data: JSONBody[StoreStatusChange],
    ) -> StoreReorder:
        """requested → accepted → ready → collected, or declined; repeating the current state
        is a no-op; 404 for a reorder that is not this store's."""
        return await service.set_status(conn, credential, reorder_id, data.state)
