"""The one mapping of every error to problem+json (RFC 9457), and its OpenAPI declaration.

Domain errors (prefs.errors) say what went wrong; this turns them, Litestar's own exceptions and
unexpected faults into answers, with the headers their meaning calls for (Retry-After, ETag,
WWW-Authenticate). Messages never carry personal data or secrets.
"""

from __future__ import annotations

import logging
import re
from typing import Any, get_args

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec
from litestar.types import ExceptionHandlersMap

from prefs.allowed import ABOUT_A_NAME, allowed, allowed_names, whole_number
from prefs.errors import DATABASE_DOWN, Problem, Unauthenticated

log = logging.getLogger("prefs.errors")

PROBLEM_JSON = "application/problem+json"
BEARER_CHALLENGE = 'Bearer realm="prefs"'


class ProblemBody(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, Any]] | None = None
    retry_after: int | None = None


_TITLES = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("body-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    431: ("headers-too-large", "Request headers too large"),
    429: ("too-many-requests", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "Service unavailable"),
}


def problem_response(
    status: int,
    detail: str | None,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Response[bytes]:
    default_slug, default_title = _TITLES.get(status, ("error", "Error"))
    body = ProblemBody(
        type=f"urn:prefs:problem:{slug or default_slug}",
        title=title or default_title,
        status=status,
        detail=detail,
        errors=errors,
    )
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def headers_for(exc: Problem) -> dict[str, str]:
    """The headers a domain error's meaning calls for."""
    headers = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if exc.current_version is not None:
        headers["ETag"] = f'"{exc.current_version}"'
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return headers


def _domain(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        headers=headers_for(exc),
        errors=exc.extra.get("errors"),
    )


_BODY_FIELD = re.compile(r"^(?P<message>.*?) - at `\$\.data\.(?P<key>[^`]*)`$", re.DOTALL)


def _misfiled_body_error(exc: Exception) -> list[dict[str, Any]] | None:
    """A body field Litestar reported as a server fault: the field shares a dependency's name.

    Litestar decides whether a failed validation is the client's by the field's name, so a body
    field called like an injected dependency (``customer`` in a partner's reorder) that fails
    validation becomes a 500. The decoder's message still says it was the body.
    """
    cause = exc.__cause__
    if not isinstance(cause, msgspec.ValidationError):
        return None
    match = _BODY_FIELD.match(str(cause))
    if match is None:
        return None
    return [{"message": match["message"], "key": match["key"], "source": "body"}]


_QUOTED = re.compile(
    r"'[^']*'"
)  # values are quoted 'so'; field names `so` stay: they name the field


def _without_values(message: str) -> str:
    """Validation messages name fields and rules; quoted values sent by the caller are dropped."""
    return _QUOTED.sub("…", message)


_PATTERN = re.compile(r" matching regex …$")


def _with_what_is_allowed(request: Request[Any, Any, Any], error: dict[str, Any]) -> dict[str, Any]:
    """An error about one field, with what that field allows in words (prefs.allowed): the
    declared description of a parameter, or the rules of a body field's type. A pattern says
    nothing a client can read, so the words stand in for it."""
    key, message = error.get("key"), error.get("message")
    if not isinstance(key, str) or not isinstance(message, str):
        return error
    parameters = request.route_handler.parsed_fn_signature.parameters
    hint = None
    if error.get("source") == "body" and "data" in parameters:
        body = parameters["data"].annotation
        if key == "data":  # the body as a whole: none, not an object, or an unknown member
            (declared, *_) = [a for a in get_args(body) if a is not type(None)] or [body]
            said = "Send a JSON object" if message in ("", "…") else message
            return {**error, "message": f"{said}; allowed: {allowed(declared, '')}"}
        hint = allowed_names(body, key) if message.startswith(ABOUT_A_NAME) else allowed(body, key)
    elif key in parameters:  # a path, query or header parameter: its declaration's words
        parameter = parameters[key]
        declared = parameter.kwarg_definition
        low, high = getattr(declared, "ge", None), getattr(declared, "le", None)
        words = [getattr(declared, "description", None)]
        if low is not None or high is not None:
            words.append(whole_number(low, high))
        hint = ", ".join(filter(None, words)) or allowed(parameter.annotation, "")
    if not hint:
        return error
    return {**error, "message": f"{_PATTERN.sub('', message)}; allowed: {hint}"}


def _summary(errors: list[dict[str, Any]]) -> str:
    """The detail of a validation error: the first error in full (a client reading only the
    detail learns what to send), and how many more ``errors`` lists."""
    first = errors[0]
    where = f"`{first['key']}`: " if isinstance(first.get("key"), str) else ""
    more = f" ({len(errors) - 1} more in errors)" if len(errors) > 1 else ""
    return f"The request does not match the schema: {where}{first.get('message', '')}.{more}"


def _http(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 500 and (misfiled := _misfiled_body_error(exc)) is not None:
        refused = [_with_what_is_allowed(request, error) for error in misfiled]
        return problem_response(400, _summary(refused), errors=refused)
    errors = None
    detail = exc.detail
    if isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        errors = [
            _with_what_is_allowed(
                request,
                {
                    k: _without_values(v) if k == "message" and isinstance(v, str) else v
                    for k, v in item.items()
                    if k in ("message", "key", "source")
                },
            )
            for item in extra
            if isinstance(item, dict)
        ] or [{"message": _without_values(exc.detail)}]
        detail = _summary(errors)
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", BEARER_CHALLENGE)
    return problem_response(exc.status_code, detail, headers=headers, errors=errors)


def _database_down(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("database unavailable: %s on %s", type(exc).__name__, request.scope.get("path"))
    return problem_response(
        503, "The database is not reachable right now; retry shortly.", headers={"Retry-After": "2"}
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, DATABASE_DOWN):
        return _database_down(request, exc)
    if getattr(exc, "constraint_name", None) == "retired_master_key":
        log.error("this process wraps under a retired master key: fix PREFS_MASTER_KEYS")
        return problem_response(503, "The service is being reconfigured; retry shortly.")
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        request.scope.get("path"),
        exc_info=exc,
    )
    return problem_response(500, "Something went wrong on our side.")


_ANSWERS = {
    400: "The request breaks the schema or a rule; `errors` names the fields.",
    401: "No valid credential for this route (Bearer token or API key of the right kind).",
    404: "Not found, not enrolled, or not shared with you: the same answer either way.",
    409: "Conflicts with the current state (a limit, a transition, a request in flight).",
    410: "The cursor names a place in an order this list no longer keeps (an earlier "
    "release's, or one from before the list was numbered afresh): read the list again from its "
    "start (without `after`).",
    412: "If-Match names a version that is no longer current: read again, then retry.",
    413: "The body is larger than the service accepts.",
    415: "The body is not JSON (for a PATCH: not a JSON Merge Patch, see Accept-Patch).",
    422: "This Idempotency-Key was already used with another request.",
    428: "Send If-Match with the version (ETag) you last read.",
    429: "Too many requests (a till's misses, a customer's card changes, an insights key's daily "
    "reads); retry after Retry-After seconds.",
    503: "The database is not reachable right now; retry after Retry-After seconds.",
}


def problems(*statuses: int) -> dict[int, Any]:
    """OpenAPI: the problem+json answers a route gives besides its success, for ``responses=``."""
    return {
        status: ResponseSpec(
            ProblemBody,
            description=_ANSWERS[status],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }


def exception_handlers() -> ExceptionHandlersMap:
    return {
        Problem: _domain,
        HTTPException: _http,
        asyncpg.PostgresConnectionError: _database_down,
        asyncpg.exceptions.OperatorInterventionError: _database_down,
        asyncpg.InterfaceError: _database_down,
        ConnectionError: _database_down,
        Exception: _unexpected,
    }
