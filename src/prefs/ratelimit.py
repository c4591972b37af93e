"""A customer's requests per minute, counted per worker process with Litestar's rate limiter.

Customers are told apart by a hash of their bearer token (never the token itself), so the
limit needs no database round trip and applies before the token is even verified. It is a
guard against a runaway or scripted client, not a security boundary: card changes, which an
attacker would repeat, are also limited per customer in the database.
"""

from __future__ import annotations

import hashlib
from typing import Any

from litestar import Request
from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware


class _WithRetryAfter(RateLimitMiddleware):
    """Litestar's limiter, with the Retry-After header a 429 should carry (RFC 9110)."""

    def create_response_headers(self, cache_object: CacheObject) -> dict[str, str]:
        headers = super().create_response_headers(cache_object)
        if len(cache_object.history) >= self.max_requests:
            headers["Retry-After"] = headers[self.config.rate_limit_reset_header_key]
        return headers


def _bearer_hash(request: Request[Any, Any, Any]) -> str:
    return hashlib.sha256(request.headers.get("authorization", "").encode()).hexdigest()


def customer_rate_limit(per_minute: int) -> RateLimitConfig:
    """At most ``per_minute`` requests a minute per bearer token (on the routes it guards)."""
    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=_bearer_hash,
        middleware_class=_WithRetryAfter,
    )
