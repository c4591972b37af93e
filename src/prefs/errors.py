"""Domain exceptions: what went wrong, in the service's terms (the HTTP mapping: prefs.problems).

Each names the status it maps to and carries meaning, never HTTP headers: how long to wait
(``retry_after``), the current version (``current_version``). Messages never carry personal data
or secrets: they name fields and rules, not values.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class Problem(Exception):
    """A domain error with its HTTP status; raised by services, shaped by ``problem_response``."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        retry_after: int | None = None,
        current_version: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after  # seconds until trying again makes sense
        self.current_version = current_version  # of the resource, after a stale If-Match
        self.extra = extra


class InvalidInput(Problem):
    status, slug, title = 400, "invalid-input", "Invalid input"


class Unauthenticated(Problem):
    """No valid credential (an unknown or revoked API key, a bad token)."""

    status, slug, title = 401, "unauthenticated", "Authentication required"


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class NotEnrolled(Problem):
    status, slug, title = 404, "not-enrolled", "Not enrolled"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class LimitReached(Problem):
    status, slug, title = 409, "limit-reached", "Limit reached"


class CursorRetired(Problem):
    status, slug, title = 410, "cursor-retired", "Cursor no longer valid"


class PreconditionFailed(Problem):
    status, slug, title = 412, "stale-version", "Version does not match"


class PreconditionRequired(Problem):
    status, slug, title = 428, "if-match-required", "If-Match required"


class IdempotencyMismatch(Problem):
    status, slug, title = 422, "idempotency-key-reused", "Idempotency-Key reused with another body"


class TooManyRequests(Problem):
    status, slug, title = 429, "too-many-requests", "Too many requests"


class Unavailable(Problem):
    status, slug, title = 503, "unavailable", "Service unavailable"


# What the database being away looks like from here: answered 503, and jobs skip a turn.
DATABASE_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, starting up
    asyncpg.InterfaceError,
    # A connection the server ended while a query was being sent: asyncpg's protocol is left
    # mid-operation ("cannot switch to state ...; another operation is in progress").
    asyncpg.InternalClientError,
    ConnectionError,
    OSError,
    TimeoutError,
)
