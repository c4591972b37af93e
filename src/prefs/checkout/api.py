"""HTTP for checkout codes: /v1/me/checkout-codes."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, delete, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from prefs.auth import customer_guard
from prefs.checkout import service
from prefs.checkout.schemas import CheckoutCode, CheckoutCodeRequest
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.http import declared_body
from prefs.problems import problems
from prefs.settings import Settings


class CheckoutCodesController(Controller):
    path = "/v1/me/checkout-codes"
    tags = ["checkout"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_class=declared_body(CheckoutCodeRequest | None, required=False),
        responses=problems(400, 401, 404, 413, 415, 503),
    )
    async def create(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        settings: NamedDependency[Settings],
        customer_id: NamedDependency[UUID],
        data: JSONBody[CheckoutCodeRequest | None] = None,
    ) -> CheckoutCode:
        """A code to show at the till, revealing only the fields chosen, for a few minutes; with
        no body, product and attributes of every preference, for the default lifetime."""
        return await service.create(
            conn,
            vault.index,
            customer_id,
            data or CheckoutCodeRequest(),
            settings.checkout_code_ttl_seconds,
        )

    @delete("/{code_id:uuid}", responses=problems(400, 401, 404, 503))
    async def end(
        self,
        conn: NamedDependency[Connection],
        customer_id: NamedDependency[UUID],
        code_id: FromPath[UUID],
    ) -> None:
        """End a code early: every till refuses it from now on (204)."""
        await service.end(conn, customer_id, code_id)
