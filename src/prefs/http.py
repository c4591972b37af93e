"""Request-body rules shared by every endpoint: JSON only, no repeated keys, bounded nesting.

And how those bodies are declared in the OpenAPI document: exactly as they are decoded.
"""

from __future__ import annotations

import copy
import json
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.params import HeaderParameter, QueryParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from prefs import idempotency
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.errors import InvalidInput
from prefs.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def constraints_of(constrained: Any) -> dict[str, Any]:
    """A constrained text type's msgspec limits, for a path parameter's declaration.

    Litestar documents path parameters without them (the decoder still applies them).
    """
    meta = next(m for m in get_args(constrained)[1:] if isinstance(m, msgspec.Meta))
    return {"pattern": meta.pattern, "min_length": meta.min_length, "max_length": meta.max_length}


# OpenAPI for an optional header or query value (``str | None`` in Python): a string when sent.
# Litestar would document ``oneOf: [string, null]``, and no client can send a null there.
STRING_WHEN_SENT: dict[str, Any] = {"one_of": None, "type": "string"}


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Bodies must be JSON (415 otherwise); body-less POSTs need no content type."""
    if request.method not in BODY_METHODS:
        return
    has_body = (
        request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    )
    if not has_body:
        return
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="Send the body as application/json.")
    check_json(await request.body())


MAX_JSON_DEPTH = 16


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidInput("The JSON body repeats a key in one object.")
    return dict(pairs)


def check_json(body: bytes) -> None:
    """Refuse what the schema decoder would let through: repeated keys, absurd nesting."""
    if not body:
        return
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nesting(body) > MAX_JSON_DEPTH:
        raise InvalidInput(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        json.loads(body.decode("utf-8"), object_pairs_hook=_refuse_duplicate_keys)  # strict UTF-8
    except (ValueError, RecursionError):
        raise InvalidInput("The body is not valid JSON.") from None


def _nesting(body: bytes) -> int:
    """Deepest bracket nesting outside strings, without building anything."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


_DECLARED: set[type] = set()  # the types declared_body documents: inline wherever they appear


def declared_body(
    body_type: Any, *, required: bool = True, refine: dict[str, Any] | None = None
) -> type[Operation]:
    """OpenAPI: the request body exactly as msgspec decodes it, for a handler's ``operation_class``.

    Litestar's own body schemas drop rules msgspec enforces (unknown fields are refused,
    constraints inside unions, patterns of map keys), so a client following the document would
    send bodies the service refuses. ``refine`` merges in rules the services check beyond the
    types (a card's digits, exactly one of card or code); ``required=False`` for an optional body.
    For ``X | None`` the refinements apply to ``X``.
    """
    body = _decoded_as(body_type, refine or {})
    _DECLARED.update(_without_none(body_type))

    @dataclass
    class DeclaredBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                required=required,
                content={"application/json": OpenAPIMediaType(schema=body)},  # type: ignore[arg-type]
            )

    return DeclaredBody


class InlineBodies(OpenAPISchemaPlugin):
    """OpenAPI: the types ``declared_body`` documents stay out of components/schemas.

    Building an operation, Litestar files its body's type there as a component, which nothing
    refers to once ``declared_body`` has replaced the body. Claiming those types here keeps
    them inline (and exact) instead.
    """

    @staticmethod
    def is_plugin_supported_type(value: Any) -> bool:
        return isinstance(value, type) and value in _DECLARED

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        return _decoded_as(field_definition.annotation, {})  # type: ignore[return-value]


def _without_none(annotation: Any) -> tuple[Any, ...]:
    """The members of ``X | None`` other than None; ``(X,)`` for a plain type."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(arg for arg in get_args(annotation) if arg is not type(None))
    return (annotation,)


def _decoded_as(body_type: Any, refine: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema msgspec decodes ``body_type`` by, inlined, with ``refine`` merged into it."""
    (decoded,) = _without_none(body_type)
    schema = msgspec.json.schema(decoded)
    definitions = schema.pop("$defs", {})
    body = _merge(_inline(schema, definitions), refine)
    if decoded is not body_type:
        return {"anyOf": [body, {"type": "null"}]}
    return body


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """The schema with every ``$ref`` to its ``$defs`` replaced by the definition itself."""
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        target = definitions[ref.removeprefix("#/$defs/")]
        rest = {key: value for key, value in schema.items() if key != "$ref"}
        return _inline({**copy.deepcopy(target), **rest}, definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def _merge(schema: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(schema)
    for key, value in extra.items():
        both_maps = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_maps else value
    return merged


# --- shared request parts: pagination and idempotent creation ------------------------------------
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


async def once_per_key(
    request: Request[Any, Any, Any],
    conn: Connection,
    vault: Vault,
    settings: Settings,
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
        settings.idempotency_ttl_seconds,
        create,
        replay,
    )
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    return Response(
        answer.body, status_code=answer.status, media_type="application/json", headers=headers
    )
