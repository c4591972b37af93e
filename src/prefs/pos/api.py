"""HTTP for the store till: POST /v1/pos/lookup."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar.exceptions import HTTPException
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from prefs.auth import api_key_guard, require_live_api_key
from prefs.errors import InvalidInput, Problem
from prefs.http import declared_body, require_json_body
from prefs.identifiers import CARD_OR_CODE, card_or_code
from prefs.observability import DISCLOSURES, LOOKUPS, BatchedCounter
from prefs.pos import service
from prefs.pos.schemas import LookupRequest, LookupResult
from prefs.problems import problems

FOUND = {via: BatchedCounter(LOOKUPS.labels(via, "found")) for via in ("card", "code")}
DISCLOSED = BatchedCounter(DISCLOSURES.labels("pos"))


_till_key = api_key_guard("pos", verify=False)  # the lookup statement checks the key itself
_lookup_body = msgspec.json.Decoder(LookupRequest)


async def till_key_then_json_body(request: Request[Any, Any, Any]) -> None:
    """The till key check, then the app's JSON body check: the guard run as a before-request
    hook, in the same order, because Litestar copies the route handler for every guard call
    (3% of a worker's time on this path).

    Only the key's shape is checked here; the lookup statement verifies the key. A body that
    will be refused is refused only once the key proved live (401 first, like every route).
    """
    await _till_key(request, request.route_handler)
    try:
        await require_json_body(request, typed=False)  # decoded strictly just below
        _lookup_body.decode(await request.body())
    except msgspec.MsgspecError:  # not the schema, or no body at all
        await require_live_api_key(request)  # then the handler's decoder says what is wrong
    except (Problem, HTTPException):
        await require_live_api_key(request)
        raise


class PosController(Controller):
    path = "/v1/pos"
    tags = ["till"]
    security = [{"api_key": []}]

    @post(
        "/lookup",
        before_request=till_key_then_json_body,
        status_code=HTTP_200_OK,
        operation_class=declared_body(LookupRequest, refine=CARD_OR_CODE),
        responses=problems(400, 401, 404, 413, 415, 429, 503),
    )
    async def lookup(
        self, request: Request[Any, Any, Any], data: JSONBody[LookupRequest]
    ) -> LookupResult:
        """A customer's ranked preferences, with only the fields they granted.

        Unknown card, expired or unknown code, erased customer and missing consent all answer
        the same 404.
        """
        try:
            card, code = card_or_code(data.card, data.code)
        except InvalidInput:
            await require_live_api_key(request)
            raise
        via = "card" if card is not None else "code"
        # read as guards do, not injected: no dependency resolution on the hot path (prefs.app)
        state = request.app.state
        try:
            result = await service.lookup(
                state.lookup_batcher,
                state.vault,
                state.throttled_tills,
                request.state.api_key.secret,
                card,
                code,
            )
        except Problem as problem:
            LOOKUPS.labels(via, problem.slug).inc()
            raise
        FOUND[via].inc()
        DISCLOSED.inc()
        return result
