"""HTTP for consent: /v1/me/consents."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, delete, get, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK

from prefs.auth import customer_guard
from prefs.consents import ledger, service
from prefs.consents.schemas import (
    ConsentChange,
    ConsentGrant,
    ConsentList,
    KantaraReceipt,
    LedgerPage,
)
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.errors import InvalidInput
from prefs.grants import Audience
from prefs.http import STRING_WHEN_SENT, constraints_of, declared_body
from prefs.problems import problems
from prefs.settings import Settings

Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Records per page")]
Before = Annotated[
    str | None,
    QueryParameter(
        max_length=18,
        pattern=r"^[0-9]{1,18}$",
        description="The `next` of the previous page",
        schema_extra=STRING_WHEN_SENT,
    ),
]
AudienceParameter = Annotated[
    Audience,
    PathParameter(
        **constraints_of(Audience),
        description="`pos`, `insights`, `purchases` or `partner:<partner id>`",
    ),
]
EXPIRING = {
    "properties": {
        "expires_at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    }
}


class ConsentsController(Controller):
    path = "/v1/me/consents"
    tags = ["consents"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(401, 404, 503))
    async def list_all(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
    ) -> ConsentList:
        """The grants in force. Nothing is shared until granted."""
        items = await service.live_consents(conn, customer_id)
        return ConsentList(items=items)

    @get("/history", responses=problems(400, 401, 404, 503))
    async def history(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        limit: Limit = 50,
        before: Before = None,
    ) -> LedgerPage:
        """Every consent change, newest first, each with its receipt and ledger hashes."""
        if before is not None and not (before.isascii() and before.isdigit()):
            raise InvalidInput("before must be the `next` value of a previous page.")
        before_seq = int(before) if before else 2**62
        items = await ledger.history(conn, customer_id, before_seq, limit)
        more = len(items) == limit and items[-1].seq > 1
        return LedgerPage(items=items, next=str(items[-1].seq) if more else None)

    @get("/receipts/{receipt_id:uuid}", responses=problems(400, 401, 404, 503))
    async def receipt(
        self,
        conn: NamedDependency[Connection],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        receipt_id: FromPath[UUID],
    ) -> KantaraReceipt:
        """One of your receipts as a Kantara Consent Receipt v1.1 document, taken from the
        ledger record made when it happened."""
        return await service.kantara_receipt(conn, settings, customer_id, receipt_id)

    @put(
        "/{audience:str}",
        status_code=HTTP_200_OK,
        operation_class=declared_body(ConsentGrant, refine=EXPIRING),
        responses=problems(400, 401, 404, 413, 415, 503),
    )
    async def grant(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        audience: AudienceParameter,
        data: JSONBody[ConsentGrant],
    ) -> ConsentChange:
        """Grant or change consent for `pos`, `insights`, `partner:<id>` (each with `fields`) or
        `purchases` (tills may add what you buy; no `fields`); returns the receipt."""
        return await service.grant(conn, vault, settings.controller, customer_id, audience, data)

    @delete("/{audience:str}", status_code=HTTP_200_OK, responses=problems(400, 401, 404, 503))
    async def withdraw(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        audience: AudienceParameter,
    ) -> ConsentChange:
        """Withdraw consent; the next request from that audience sees nothing."""
        return await service.withdraw(conn, vault, settings.controller, customer_id, audience)
