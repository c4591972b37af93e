"""Request-body rules shared by every endpoint: JSON only, no repeated keys, bounded nesting.

And how those bodies are declared in the OpenAPI document: exactly as they are decoded.
"""

from __future__ import annotations

import copy
import json
import re
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import msgspec
import msgspec.inspect
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.params import HeaderParameter, QueryParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from prefs import idempotency
from prefs.allowed import ABOUT_A_NAME
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.errors import InvalidInput
from prefs.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# what a PATCH may be sent as: a JSON Merge Patch (RFC 7396), under its own name or as JSON
MERGE_PATCH = "application/merge-patch+json"
PATCH_MEDIA_TYPES = (MERGE_PATCH, "application/json")


def constraints_of(constrained: Any) -> dict[str, Any]:
    """A constrained text type's msgspec limits, for a path parameter's declaration.

    Litestar documents path parameters without them (the decoder still applies them).
    """
    meta = next(m for m in get_args(constrained)[1:] if isinstance(m, msgspec.Meta))
    return {"pattern": meta.pattern, "min_length": meta.min_length, "max_length": meta.max_length}


# OpenAPI for an optional header or query value (``str | None`` in Python): a string when sent.
# Litestar would document ``oneOf: [string, null]``, and no client can send a null there.
STRING_WHEN_SENT: dict[str, Any] = {"one_of": None, "type": "string"}


_STRICT: dict[Any, msgspec.json.Decoder[Any] | None] = {}
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_AT_KEY = re.compile(r" - at `key` in `\$\.?([^`]*)`$")


def body_type_of(handler: Any) -> Any:
    """The type a handler's ``data`` (its body) is declared as, or None for a body-less one."""
    data = handler.parsed_fn_signature.parameters.get("data")
    return data.annotation if data is not None else None


def _strict_decoder(handler: Any) -> msgspec.json.Decoder[Any] | None:
    """A strict decoder of the handler's ``data`` (a msgspec Struct), made once per handler."""
    if handler not in _STRICT:
        body_type = body_type_of(handler)
        (declared,) = _without_none(body_type) if body_type is not None else (None,)
        is_struct = isinstance(declared, type) and issubclass(declared, msgspec.Struct)
        _STRICT[handler] = msgspec.json.Decoder(body_type) if is_struct else None
    return _STRICT[handler]


def decode_strictly(request: Request[Any, Any, Any], body: bytes) -> None:
    """Refuse a body whose values are not of their declared JSON types.

    Litestar converts bodies leniently (``0`` passes for ``false``, ``"30"`` for ``30``); the
    contract declares types, so a body that breaks them is a 400 before the handler runs, with
    the same problem shape as Litestar's own validation errors.
    """
    decoder = _strict_decoder(request.route_handler)
    if decoder is None or not body:
        return
    try:
        decoder.decode(body)
    except msgspec.ValidationError as error:
        if _only_integral_floats(decoder.type, body):
            return  # 283.0 is an integer in JSON Schema; msgspec's strict mode wants 283
        text = str(error)
        at = _AT.search(text)
        message: dict[str, str] = {"message": _AT.sub("", text), "source": "body"}
        # prefs.problems adds what the field allows; ``data`` is the body as a whole (msgspec
        # names no path for it), and an error about a map's key names the map
        if (about_a_name := _AT_KEY.search(text)) is not None:
            message["message"] = ABOUT_A_NAME + _AT_KEY.sub("", text)
            message["key"] = about_a_name.group(1) or "data"
        elif at or " - at " not in text:
            message["key"] = (at.group(1) if at else "") or "data"
        raise ValidationException(
            detail=f"Validation failed for {request.method} {request.url.path}", extra=[message]
        ) from None
    except msgspec.DecodeError:
        raise InvalidInput("The body is not valid JSON.") from None


def _only_integral_floats(body_type: Any, body: bytes) -> bool:
    """Whether the lenient decoding of ``body`` changes nothing but integral floats to integers
    (the one leniency JSON Schema shares): no string read as a number, no 0 read as false."""
    try:
        lenient = msgspec.to_builtins(msgspec.json.decode(body, type=body_type, strict=False))
    except msgspec.ValidationError:
        return False
    return _same(json.loads(body), lenient)


def _same(sent: Any, read: Any) -> bool:
    if isinstance(sent, dict):
        return isinstance(read, dict) and all(_same(v, read.get(k)) for k, v in sent.items())
    if isinstance(sent, list):
        return (
            isinstance(read, list)
            and len(sent) == len(read)
            and all(_same(a, b) for a, b in zip(sent, read, strict=True))
        )
    if isinstance(sent, bool) or isinstance(read, bool):
        return type(sent) is type(read) and sent == read
    if isinstance(sent, float):
        return isinstance(read, int) and sent == read
    return type(sent) is type(read)


async def require_json_body(request: Request[Any, Any, Any], *, typed: bool = True) -> None:
    """Bodies must be JSON (415 otherwise), of the declared types when ``typed``; body-less
    POSTs need no content type."""
    if request.method not in BODY_METHODS:
        return
    has_body = (
        request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
    )
    if not has_body:
        return
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "PATCH" and media_type not in PATCH_MEDIA_TYPES:
        raise HTTPException(
            status_code=415,
            detail="Send the patch as application/merge-patch+json (RFC 7396) or "
            "application/json, the same either way; JSON Patch (RFC 6902) is not taken.",
            headers={"Accept-Patch": ", ".join(PATCH_MEDIA_TYPES)},
        )
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="Send the body as application/json.")
    body = await request.body()
    check_json(body)
    if typed:
        decode_strictly(request, body)


MAX_JSON_DEPTH = 16


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidInput("The JSON body repeats a key in one object.")
    return dict(pairs)


# json.loads(…, object_pairs_hook=…) would build a decoder (and its scanner) for every body
_CHECKING_DECODER = json.JSONDecoder(object_pairs_hook=_refuse_duplicate_keys)


def check_json(body: bytes) -> None:
    """Refuse what the schema decoder would let through: repeated keys, absurd nesting."""
    if not body:
        return
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and _nesting(body) > MAX_JSON_DEPTH:
        raise InvalidInput(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.")
    try:
        _CHECKING_DECODER.decode(body.decode("utf-8"))  # strict UTF-8
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
    body_type: Any,
    *,
    required: bool = True,
    refine: dict[str, Any] | None = None,
    media_types: tuple[str, ...] = ("application/json",),
) -> type[Operation]:
    """OpenAPI: the request body exactly as msgspec decodes it, for a handler's ``operation_class``.

    Litestar's own body schemas drop rules msgspec enforces (unknown fields are refused,
    constraints inside unions, patterns of map keys), so a client following the document would
    send bodies the service refuses. ``refine`` merges in rules the services check beyond the
    types (a card's digits, exactly one of card or code); ``required=False`` for an optional body.
    For ``X | None`` the refinements apply to ``X``. ``media_types``: those the body may be
    sent as (a PATCH names ``application/merge-patch+json`` first).
    """
    body = _decoded_as(body_type, refine or {})
    _DECLARED.update(_without_none(body_type))

    @dataclass
    class DeclaredBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(
                required=required,
                content={
                    media_type: OpenAPIMediaType(schema=body)  # type: ignore[arg-type]
                    for media_type in media_types
                },
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
    *,
    scope: str = "",
) -> Response[Any]:
    """Run a creating request once per Idempotency-Key; replays say so in a header. ``scope``
    narrows the key to one caller within ``owner`` (it is stored only inside the key's keyed
    hash, where ``owner`` is in clear)."""
    key = idempotency.check_key(idempotency_key)
    if scope:
        key = f"{scope}\x00{key}"
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
