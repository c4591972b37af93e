"""HTTP for consent: /v1/me/consents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from litestar import Controller, Response, delete, get, put
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, JSONBody, PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT

from prefs.auth import customer_guard
from prefs.consents import ledger, service
from prefs.consents.schemas import (
    ConsentChange,
    ConsentGrant,
    ConsentList,
    KantaraReceipt,
    LedgerPage,
    ReceiptKey,
    ReceiptKeys,
)
from prefs.crypto import ReceiptSigner, Vault
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
ReceiptFormat = Annotated[
    Literal["json", "jws"],
    QueryParameter(
        description="`json`: the Kantara Consent Receipt v1.1 document; `jws`: that document as a "
        "compact JWS (EdDSA) signed with a key published at /.well-known/jwks.json"
    ),
]
JOSE = "application/jose"  # RFC 7515: a JWS in compact serialization
JWK_SET = "application/jwk-set+json"  # RFC 7517


@dataclass
class KantaraOrSigned(Operation):
    """OpenAPI: a receipt answers either media type, as ``format`` asks."""

    def __post_init__(self) -> None:
        assert self.responses is not None
        answer = self.responses["200"]
        assert isinstance(answer, OpenAPIResponse) and answer.content is not None
        answer.content[JOSE] = OpenAPIMediaType(
            schema=Schema(
                type=OpenAPIType.STRING,
                pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
                description="The JSON document as a compact JWS; its header names the key (kid)",
            )
        )


EXPIRING = {
    "properties": {
        "expires_at": {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    }
}


# a receipt names the customer and whom they shared with: no cache keeps it (like the export)
NOT_KEPT = {"cache-control": "no-store"}


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

    @get(
        "/receipts/{receipt_id:uuid}",
        operation_class=KantaraOrSigned,
        responses={
            200: ResponseSpec(
                KantaraReceipt,
                description="The receipt, as a Kantara Consent Receipt v1.1 document or a JWS",
                generate_examples=False,
            ),
            **problems(400, 401, 404, 503),
        },
    )
    async def receipt(
        self,
        conn: NamedDependency[Connection],
        settings: NamedDependency[Settings],
        receipt_signer: NamedDependency[ReceiptSigner],
        customer_id: NamedDependency[UUID],
        receipt_id: FromPath[UUID],
        format: ReceiptFormat = "json",
    ) -> Response[bytes]:
        """One of your receipts as a Kantara Consent Receipt v1.1 document, taken from the
        ledger record made when it happened; `?format=jws` signs it, for keeping and showing."""
        document = msgspec.json.encode(
            await service.kantara_receipt(conn, settings, customer_id, receipt_id)
        )
        if format == "jws":
            return Response(
                receipt_signer.sign(document).encode(), media_type=JOSE, headers=NOT_KEPT
            )
        return Response(document, media_type="application/json", headers=NOT_KEPT)

    @put(
        "/{audience:str}",
        status_code=HTTP_200_OK,
        operation_class=declared_body(ConsentGrant | None, required=False, refine=EXPIRING),
        responses=problems(400, 401, 404, 413, 415, 503),
    )
    async def grant(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        audience: AudienceParameter,
        data: JSONBody[ConsentGrant | None] = None,
    ) -> ConsentChange:
        """Grant or change consent for `pos`, `insights`, `partner:<id>` (each with `fields`) or
        `purchases` (tills may add what you buy; no `fields`, so no body); returns the receipt."""
        return await service.grant(
            conn, vault, service.terms(settings), customer_id, audience, data or ConsentGrant()
        )

    @delete(
        "/{audience:str}",
        status_code=HTTP_200_OK,
        responses={
            200: ResponseSpec(
                ConsentChange,
                description="Withdrawn: the receipt, and the partner's reorders it cancelled",
                generate_examples=False,
            ),
            204: ResponseSpec(
                None, description="No consent to this audience was in force: nothing to withdraw"
            ),
            **problems(400, 401, 404, 503),
        },
    )
    async def withdraw(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        audience: AudienceParameter,
    ) -> Response[ConsentChange | None]:
        """Withdraw consent; the next request from that audience sees nothing. Answers the
        receipt and the partner's reorders it cancelled (`cancelled_reorders`: those not
        accepted yet); 204 when no consent was in force (withdrawing again changes nothing)."""
        change = await service.withdraw(conn, vault, service.terms(settings), customer_id, audience)
        if change is None:
            return Response(None, status_code=HTTP_204_NO_CONTENT)
        return Response(change)


class ReceiptKeysController(Controller):
    path = "/.well-known"
    tags = ["consents"]

    @get("/jwks.json", media_type=JWK_SET, sync_to_thread=False)
    def receipt_keys(self, receipt_signer: NamedDependency[ReceiptSigner]) -> Response[ReceiptKeys]:
        """The public keys that sign receipts (a JWK set), old ones included: a receipt still
        verifies after its key is no longer the one signing."""
        keys = [msgspec.convert(key, ReceiptKey) for key in receipt_signer.public_keys()]
        return Response(
            ReceiptKeys(keys=keys),
            media_type=JWK_SET,
            headers={"cache-control": "public, max-age=300"},
        )
