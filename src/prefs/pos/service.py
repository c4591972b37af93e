"""The till lookup — the hot path: one statement checks the key, finds the customer, checks
consent, reads the granted fields and records the disclosure, all in one round trip."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from prefs.crypto import Vault, api_key_hash
from prefs.errors import NotFound, Problem, TooManyRequests
from prefs.pos.schemas import LookupResult
from prefs.preferences.sealed import SHOWN, shared_view


class InvalidApiKey(Problem):
    status, slug, title = 401, "unauthenticated", "Authentication required"


NOT_FOUND = "No customer preferences can be shown for this card or code."

LOOKUP = f"""
WITH cred AS (
    SELECT credential_id, display_name, store FROM credentials
    WHERE key_hash = $1 AND kind = 'pos' AND revoked_at IS NULL
), hit AS (
    SELECT ci.customer_id, g.fields, g.preference_ids, 'card' AS via
    FROM card_index ci
    JOIN consents g ON g.customer_id = ci.customer_id AND g.audience = 'pos'
    WHERE ci.card_hash = ANY($2::bytea[]) AND (g.expires_at IS NULL OR g.expires_at > now())
      AND EXISTS (SELECT 1 FROM cred)
    UNION ALL
    SELECT k.customer_id, k.fields, k.preference_ids, 'code'
    FROM checkout_codes k
    WHERE k.code_hash = ANY($3::bytea[]) AND k.expires_at > now() AND EXISTS (SELECT 1 FROM cred)
    LIMIT 1
), shown AS ({SHOWN}), logged AS (
    INSERT INTO access_log (customer_id, actor_kind, credential_id, actor_name, store, purpose, via,
                            preference_ids, fields)
    SELECT hit.customer_id, 'pos', cred.credential_id, cred.display_name, cred.store, 'checkout',
           hit.via, coalesce((SELECT array_agg(preference_id ORDER BY rank) FROM shown), '{{}}'),
           hit.fields
    FROM hit CROSS JOIN cred
    RETURNING disclosure_id
)
SELECT cred.store, hit.customer_id, hit.fields, hit.via, k.generation, k.wrapped,
       (SELECT disclosure_id FROM logged) AS disclosure_id,
       shown.preference_id, shown.rank, shown.status, shown.product_ct, shown.attributes_ct,
       shown.note_ct
FROM cred
LEFT JOIN hit ON true
LEFT JOIN customer_keys k ON k.customer_id = hit.customer_id
LEFT JOIN shown ON true
ORDER BY shown.rank
"""


class MissThrottle:
    """Counts failed lookups per key and per store in fixed one-minute windows (per process)."""

    WINDOW = 60.0

    def __init__(self, per_key: int, per_store: int) -> None:
        self.limits = {"key": per_key, "store": per_store}
        self.windows: dict[tuple[str, Any], tuple[float, int]] = {}
        self.store_of_key: dict[bytes, str] = {}

    def _retry_after(self, scope: str, who: Any, now: float) -> int | None:
        start, count = self.windows.get((scope, who), (now, 0))
        if now - start < self.WINDOW and count >= self.limits[scope]:
            return max(1, math.ceil(start + self.WINDOW - now))
        return None

    def check(self, key_hash: bytes) -> None:
        now = time.monotonic()
        store = self.store_of_key.get(key_hash)
        for scope, who in (("key", key_hash), ("store", store)):
            if who is not None and (wait := self._retry_after(scope, who, now)) is not None:
                raise TooManyRequests(
                    f"Too many lookups found nothing; try again in {wait} s.",
                    headers={"Retry-After": str(wait)},
                )

    def miss(self, key_hash: bytes, store: str) -> None:
        now = time.monotonic()
        if len(self.windows) > 100_000:
            self.windows = {k: v for k, v in self.windows.items() if now - v[0] < self.WINDOW}
        self.store_of_key[key_hash] = store
        for key in (("key", key_hash), ("store", store)):
            start, count = self.windows.get(key, (now, 0))
            self.windows[key] = (start, count + 1) if now - start < self.WINDOW else (now, 1)


async def lookup(
    conn: asyncpg.Connection,
    vault: Vault,
    throttle: MissThrottle,
    api_key: str,
    card: str | None,
    code: str | None,
) -> LookupResult:
    """Disclose the granted fields of a customer's ranked preferences to a till, and log it."""
    key_hash = api_key_hash(api_key)
    throttle.check(key_hash)
    card_hashes: Sequence[bytes] = vault.index.all_digests("card", card.encode()) if card else ()
    code_hashes: Sequence[bytes] = (
        vault.index.all_digests("checkout-code", code.encode()) if code else ()
    )
    rows = await conn.fetch(LOOKUP, key_hash, card_hashes, code_hashes)
    if not rows:
        raise InvalidApiKey(
            "The API key is not valid.", headers={"WWW-Authenticate": 'Bearer realm="prefs"'}
        )
    first = rows[0]
    if first["customer_id"] is None:
        throttle.miss(key_hash, first["store"])
        raise NotFound(NOT_FOUND)
    customer_id: uuid.UUID = first["customer_id"]
    data_key = vault.envelope.unwrap(customer_id, first["generation"], first["wrapped"])
    return LookupResult(
        via=first["via"],
        fields=list(first["fields"]),
        preferences=[
            shared_view(data_key, row) for row in rows if row["preference_id"] is not None
        ],
        disclosure_id=first["disclosure_id"],
    )
