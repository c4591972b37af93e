"""Request-body rules shared by every endpoint: JSON only, no repeated keys, bounded nesting."""

from __future__ import annotations

import json
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

from prefs.errors import InvalidInput

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Bodies must be JSON (415 otherwise); body-less POSTs need no content type."""
    if request.method not in BODY_METHODS:
        return
    has_body = request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers
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
        json.loads(body, object_pairs_hook=_refuse_duplicate_keys)
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
