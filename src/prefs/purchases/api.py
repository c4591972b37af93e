"""HTTP for the till's purchase writes: POST /v1/pos/purchases."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from prefs.auth import api_key_guard
from prefs.credentials import Credential
from prefs.crypto import Vault, api_key_hash
from prefs.db import Connection
from prefs.http import IdempotencyKey, declared_body, once_per_key
from prefs.identifiers import CARD_OR_CODE, card_or_code
from prefs.problems import problems
from prefs.purchases import service
from prefs.purchases.schemas import PurchaseRequest, PurchaseResult
from prefs.settings import Settings
from prefs.throttle import missed, refusal


class PurchasesController(Controller):
    path = "/v1/pos/purchases"
    tags = ["till"]
    guards = [api_key_guard("pos")]
    security = [{"api_key": []}]

    @post(
        "/",
        status_code=200,
        operation_class=declared_body(PurchaseRequest, refine=CARD_OR_CODE),
        responses=problems(400, 401, 404, 409, 413, 415, 422, 429, 503),
    )
    async def record(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        credential: NamedDependency[Credential],
        settings: NamedDependency[Settings],
        data: JSONBody[PurchaseRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[PurchaseResult]:
        """Add what a customer bought to their locker: each item counts again on the preference
        with the same SKU and attributes, or becomes a new one at the end of their order.

        Needs the customer's `purchases` grant (with `card`) or a checkout code made with
        `keep_purchases` (with `code`, once). Otherwise the same 404 as the lookup's, counted as
        a miss of the key and the store. All items or none; the answer holds counts only.
        """
        card, code = card_or_code(data.card, data.code)
        assert credential.store is not None  # every till key belongs to a store
        key_hash = api_key_hash(request.state.api_key.secret)
        limits = (
            settings.lookup_misses_per_minute_per_key,
            settings.lookup_misses_per_minute_per_store,
        )
        await refusal(conn, key_hash, credential.store, *limits)

        async def create() -> tuple[Any, int, bytes]:
            customer_id, result = await service.record(
                conn, vault, credential, card, code, data.items
            )
            return customer_id, 200, msgspec.json.encode(result)

        try:
            return await once_per_key(
                request,
                conn,
                vault,
                settings,
                "till-purchases",  # in clear beside the customer: never which till
                idempotency_key,
                data,
                create,
                scope=f"{credential.id}",  # each till key's keys are its own, hashed with them
            )
        except service.NoCustomer:
            await missed(conn, key_hash, credential.store, *limits)
