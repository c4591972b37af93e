"""What happened: the writes whose consequences reach beyond their own capability.

A capability says what it did (``await follow(conn, vault, GrantEnded(customer, audience))``)
inside its writing transaction; what follows is listed in one table, ``prefs.consequences``,
and runs in the same transaction, so a write and its consequences commit or roll back together.

The table imports the capabilities it calls, so it is looked up by name on first use rather
than imported here: the ground floor stays below every capability (the import contracts in
pyproject.toml check that no capability reaches another).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from prefs.crypto import Vault
from prefs.grants import audience_kind


@dataclass(frozen=True)
class PreferencesChanged:
    """A preference was added, changed, moved or deleted."""

    customer_id: uuid.UUID


@dataclass(frozen=True)
class GrantGiven:
    """A grant was given or changed (fields, preferences or expiry)."""

    customer_id: uuid.UUID
    audience: str


@dataclass(frozen=True)
class GrantEnded:
    """A grant was withdrawn or expired."""

    customer_id: uuid.UUID
    audience: str


@dataclass(frozen=True)
class CustomerErased:
    """Everything about a customer is being erased (called before the rows go)."""

    customer_id: uuid.UUID


@dataclass(frozen=True)
class StatusesMoved:
    """A catalogue import moved the status of SKUs (recorded in ``catalogue_moves`` by its
    transactions). Followed once they committed, outside a transaction, by an import given the
    keys; the service's periodic job follows the moves an import without them recorded
    (prefs.retention.recount_moved). What follows takes each customer concerned in a
    transaction of its own."""


Happened = PreferencesChanged | GrantGiven | GrantEnded | CustomerErased | StatusesMoved


@dataclass(frozen=True)
class ReorderCancelled:
    """A consequence the writer's answer tells: a partner's reorder cancelled because the grant
    to it ended or no longer covers the preference."""

    reorder_id: uuid.UUID
    preference_id: uuid.UUID | None
    quantity: int
    origin: str


Followed = ReorderCancelled  # what a consequence did that its writer tells the customer
# a consequence returns what it did that the writer's answer tells, or None
Consequence = Callable[[asyncpg.Connection, Vault, Happened], Awaitable[Sequence[Followed] | None]]
# (what happened, the audience kind for grants or None) -> what follows, in order
Table = Mapping[tuple[type, str | None], Sequence[Consequence]]

_table: Table | None = None


def _key(happened: Happened) -> tuple[type, str | None]:
    audience = getattr(happened, "audience", None)
    return type(happened), None if audience is None else audience_kind(audience)


async def follow(conn: asyncpg.Connection, vault: Vault, happened: Happened) -> list[Followed]:
    """Run what follows from ``happened`` (call inside the writing transaction); returns what
    followed that the writer's answer should tell (cancelled reorders)."""
    global _table
    if _table is None:
        _table = importlib.import_module("prefs.consequences").TABLE
    followed: list[Followed] = []
    for consequence in _table.get(_key(happened), ()):
        followed.extend(await consequence(conn, vault, happened) or ())
    return followed
