"""HTTP for the store till: POST /v1/pos/lookup.

The route is declared, documented and guarded as every other (``PosController``), and an ordinary
lookup is answered by ``LeanLookup``, the route's own middleware, without Litestar's request
cycle: it checks what the route's guard and body checks would (the key's shape, a JSON body of
the declared schema, exactly one card or code), asks the same service, and sends the answer
itself. Anything else (a missing or malformed key, another media type, a body it cannot take)
goes on to the route, which answers it as it always has: one code path owns each answer's
wording, and the lean one never judges a request it does not serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from litestar import Controller, Request, post
from litestar._asgi.utils import wrap_in_exception_handler
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from prefs.auth import API_KEY_PREFIX, api_key_guard, require_live_api_key
from prefs.errors import InvalidInput, Problem
from prefs.http import check_json, declared_body, require_json_body
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


_encode = msgspec.json.Encoder().encode
_TILL_PREFIX = API_KEY_PREFIX["pos"].encode()
_JSON = b"application/json"
_LOOKED_AT = frozenset((b"authorization", b"content-type", b"content-length", b"transfer-encoding"))
_LENGTH_DIGITS = 18  # a longer Content-Length is the route's (int() refuses 4 301 digits: a 500)


def _ordinary(scope: Scope, max_body: int) -> tuple[str, int] | None:
    """The till key and body length of a request the lean path may serve: a bearer key of the
    till's shape (as the route's guard wants it), a body declared application/json, of a length
    given up front and within the limit. None for anything else."""
    if scope["method"] != "POST":  # type: ignore[typeddict-item]
        return None
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _LOOKED_AT:
            if name in found:  # said twice: the route decides which counts
                return None
            found[name] = value
    if b"transfer-encoding" in found:
        return None
    key = found.get(b"authorization")
    content_type, length = found.get(b"content-type"), found.get(b"content-length")
    if key is None or content_type != _JSON or length is None or not length.isdigit():
        return None
    scheme, _, secret = key.partition(b" ")
    if scheme.lower() != b"bearer" or not secret.startswith(_TILL_PREFIX) or len(secret) > 128:
        return None
    till_key = secret.decode("latin-1")
    if till_key != till_key.strip():  # the guard strips it (spaces, tabs, NBSP…): the route's
        return None
    if len(length) > _LENGTH_DIGITS or not 0 < int(length) <= max_body:
        return None
    return till_key, int(length)


async def _body(receive: Receive, length: int) -> tuple[bytes, list[ReceiveMessage]]:
    """The request's body as sent (at most ``length`` bytes, as declared), and the messages it
    came in, to hand on unchanged if the route is to answer after all."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"", messages  # the client went away: the route sees it too
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > length or not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def _replay(messages: Sequence[ReceiveMessage], receive: Receive) -> Receive:
    """``receive`` with ``messages`` given back first."""
    pending = list(messages)

    async def replayed() -> ReceiveMessage:
        return pending.pop(0) if pending else await receive()

    return replayed


class LeanLookup(ASGIMiddleware):
    """Serves the ordinary till lookup without Litestar's request cycle (about a sixth of a
    worker's time per lookup, measured with py-spy under wrk), and hands every other request to
    the route.

    It runs inside the app's middleware (request id, security headers, metrics, the request
    line), and its errors pass through the route's exception handlers, so its answers carry the
    same headers and problem bodies as the route's.
    """

    scopes = (ScopeType.HTTP,)
    served = 0  # lookups this path took (answered or refused), for tests and the curious

    def __init__(self) -> None:
        super().__init__()
        # its errors answered by the route's exception handlers, inside the app's middleware
        self._app = wrap_in_exception_handler(self._answer)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        state = scope["litestar_app"].state
        ordinary = _ordinary(scope, state.settings.max_body_bytes)
        if ordinary is None:
            await next_app(scope, receive, send)
            return
        secret, length = ordinary
        body, messages = await _body(receive, length)
        try:
            if len(body) != length:
                raise InvalidInput("The body is not the length it declared.")
            check_json(body)
            data = _lookup_body.decode(body)
            card, code = card_or_code(data.card, data.code)
        except (msgspec.MsgspecError, Problem):  # the route says what is wrong, in its order
            await next_app(scope, _replay(messages, receive), send)
            return
        scope["state"]["lean_lookup"] = (secret, card, code)
        LeanLookup.served += 1
        await self._app(scope, receive, send)

    @staticmethod
    async def _answer(scope: Scope, receive: Receive, send: Send) -> None:
        secret, card, code = scope["state"].pop("lean_lookup")
        state = scope["litestar_app"].state
        result = await _looked_up(state, secret, card, code)
        body = _encode(result)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": HTTP_200_OK,
            "headers": [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())],
        }
        await send(start)
        finish: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        await send(finish)


async def _looked_up(state: Any, secret: str, card: str | None, code: str | None) -> LookupResult:
    """The lookup, counted in the metrics by how it was asked and how it ended."""
    via = "card" if card is not None else "code"
    try:
        result = await service.lookup(
            state.lookup_batcher, state.vault, state.throttled_tills, secret, card, code
        )
    except Problem as problem:
        LOOKUPS.labels(via, problem.slug).inc()
        raise
    FOUND[via].inc()
    DISCLOSED.inc()
    return result


class PosController(Controller):
    path = "/v1/pos"
    tags = ["till"]
    security = [{"api_key": []}]

    @post(
        "/lookup",
        before_request=till_key_then_json_body,
        middleware=[LeanLookup()],
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
        # read as guards do, not injected: no dependency resolution on the hot path (prefs.app)
        return await _looked_up(request.app.state, request.state.api_key.secret, card, code)
