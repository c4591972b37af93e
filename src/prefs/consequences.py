"""The table of consequences: what a write causes outside its own capability.

Read it as a list: when *this* happens (to *this* audience), *these* follow, in order, inside the
same transaction as the write (prefs.events.follow runs them). Nothing else reaches sideways:
a capability that writes says what happened; this table is the one place that knows who cares.
Expiry is not here: grants past their end are ended by one job (prefs.retention.expire), and
their end follows this table like a withdrawal.
"""

from __future__ import annotations

import uuid

import asyncpg

from prefs import partner_refs
from prefs.checkout import service as checkout
from prefs.crypto import Vault
from prefs.events import (
    Consequence,
    CustomerErased,
    GrantEnded,
    GrantGiven,
    Happened,
    PreferencesChanged,
    ReorderCancelled,
    StatusesMoved,
    Table,
)
from prefs.grants import INSIGHTS, POS, PURCHASES, partner_of
from prefs.insights import service as insights
from prefs.reorders import service as reorders


def _customer(happened: Happened) -> uuid.UUID:
    """The customer a write happened to (every event but the catalogue's names one)."""
    assert not isinstance(happened, StatusesMoved)
    return happened.customer_id


async def recount_demand(conn: asyncpg.Connection, vault: Vault, happened: Happened) -> None:
    """Anonymous demand counts follow the grant: contributions taken back, made again if live."""
    await insights.refresh(conn, vault, _customer(happened))


async def recount_demand_if_granted(
    conn: asyncpg.Connection, vault: Vault, happened: Happened
) -> None:
    """A changed locker changes demand, only for a customer with a live `insights` grant."""
    await insights.recount_if_granted(conn, vault, _customer(happened))


async def forget_demand(conn: asyncpg.Connection, vault: Vault, happened: Happened) -> None:
    """An erased customer's contributions go, and the labels of groups nobody else wants."""
    await insights.forget(conn, vault, _customer(happened))


async def recount_keepers(conn: asyncpg.Connection, vault: Vault, happened: Happened) -> None:
    """Demand counts the catalogue's status: the customers keeping the SKUs it moved recount."""
    await insights.recount_keepers(conn, vault)


async def end_checkout_codes(conn: asyncpg.Connection, vault: Vault, happened: Happened) -> None:
    """No longer sharing with tills ends the customer's checkout codes too."""
    await checkout.end_all(conn, _customer(happened))


async def stop_keeping_purchases(
    conn: asyncpg.Connection, vault: Vault, happened: Happened
) -> None:
    """No longer letting tills add purchases ends that for the customer's live codes too."""
    await checkout.stop_keeping_purchases(conn, _customer(happened))


async def make_partner_references(
    conn: asyncpg.Connection, vault: Vault, happened: Happened
) -> None:
    """The partner's reference for the customer and its ids for every granted preference, made
    as the grant is given (so reorders placed later never wait on each other to make them)."""
    assert isinstance(happened, GrantGiven)
    partner_id = partner_of(happened.audience)
    assert partner_id is not None
    await partner_refs.ensure_ref(conn, vault.index, partner_id, _customer(happened))
    await partner_refs.make_for_grant(conn, _customer(happened), partner_id)


async def cancel_reorders_outside_grant(
    conn: asyncpg.Connection, vault: Vault, happened: Happened
) -> list[ReorderCancelled]:
    """A narrowed grant cancels the partner's waiting reorders of preferences it no longer covers."""
    assert isinstance(happened, GrantGiven)
    partner_id = partner_of(happened.audience)
    assert partner_id is not None
    return await reorders.cancel_outside_grant(conn, _customer(happened), partner_id)


async def cancel_partner_reorders(
    conn: asyncpg.Connection, vault: Vault, happened: Happened
) -> list[ReorderCancelled]:
    """An ended grant cancels the partner's reorders that it has not accepted yet."""
    assert isinstance(happened, GrantEnded)
    partner_id = partner_of(happened.audience)
    assert partner_id is not None
    return await reorders.cancel_requested_for_partner(conn, _customer(happened), partner_id)


PARTNER = "partner"
NONE: tuple[Consequence, ...] = ()

TABLE: Table = {
    (PreferencesChanged, None): (recount_demand_if_granted,),
    (GrantGiven, POS): NONE,
    (GrantEnded, POS): (end_checkout_codes,),
    (GrantGiven, PURCHASES): NONE,
    (GrantEnded, PURCHASES): (stop_keeping_purchases,),
    (GrantGiven, INSIGHTS): (recount_demand,),
    (GrantEnded, INSIGHTS): (recount_demand,),
    (GrantGiven, PARTNER): (make_partner_references, cancel_reorders_outside_grant),
    (GrantEnded, PARTNER): (cancel_partner_reorders,),
    (CustomerErased, None): (forget_demand,),
    (StatusesMoved, None): (recount_keepers,),
}
