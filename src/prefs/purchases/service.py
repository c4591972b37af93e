"""Recording what a customer bought into their locker, in one transaction.

The customer is found by a proven card with a `purchases` grant in force, or by a checkout code
made with ``keep_purchases`` at this till's store, which the write uses up; either is checked
again under the customer lock (which every consent change takes first), so a withdrawal either
waits for the write or is seen by it. Each item
either counts again on the preference with the same SKU and attributes (``purchases`` and
``last_purchased_on``, both sealed) or becomes a new preference at the end of the order, with
the catalogue's facts when it knows the SKU and where it came from (``source``, sealed). The
write is in the customer's access log, in words, in the same transaction.

Matching opens the customer's preferences (SKU and attributes are sealed, so no query can
compare them): at most MAX_PREFERENCES small ciphertexts, under the customer lock that every
change to the locker takes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from prefs.credentials import Credential
from prefs.crypto import BlindIndex, DataKey, Vault
from prefs.customer_keys import data_key, lock_customer
from prefs.disclosures import INSERT_SEALED, Visit
from prefs.disclosures import seal as seal_visit
from prefs.errors import InvalidInput
from prefs.events import PreferencesChanged, follow
from prefs.grants import IN_FORCE, PURCHASES
from prefs.products import MAX_PREFERENCES, Product, Source
from prefs.purchases.schemas import PurchasedItem, PurchaseResult
from prefs.sealed_preferences import Content, open_content, open_purchases, seal_purchases, written

MAX_PURCHASES = 1_000_000  # a preference's purchase count stops here (the customer's own limit)
EARLIEST = date(2000, 1, 1)


# a SKU and its attributes, in order; a preference typed without a SKU (None) matches no
# purchase, since a till always names one
Match = tuple[str | None, tuple[tuple[str, str], ...]]


def _match(sku: str | None, attributes: Mapping[str, str]) -> Match:
    """What makes two purchases the same preference: the SKU and the attributes, in any order."""
    return sku, tuple(sorted(attributes.items()))


class NoCustomer(Exception):
    """No customer lets this till add purchases: the caller answers the one 404 and counts the
    miss (the transaction is rolled back)."""


# A proven card's holders, the current index-key version's hash first (read without locks, by
# the card's hash alone: card_index lives on the card's shard, consents on the customer's)...
CARD_HOLDERS = """
SELECT customer_id FROM card_index WHERE card_hash = ANY($1::bytea[])
ORDER BY array_position($1::bytea[], card_hash)
"""
# ... and which of them has a purchases grant in force (by customer_id: the customers' shards).
# The grant is checked again under the customer lock, which every consent change takes first.
GRANTED = f"""
SELECT g.customer_id FROM consents g
WHERE g.customer_id = ANY($1::uuid[]) AND g.audience = '{PURCHASES}' AND {IN_FORCE}
"""
# a live code that keeps purchases, bound to (or not yet bound to any) store
BY_CODE = """
SELECT k.customer_id FROM checkout_codes k
WHERE k.code_hash = ANY($1::bytea[]) AND k.expires_at > now() AND k.keep_purchases
  AND (k.store IS NULL OR k.store = $2)
LIMIT 1
"""
# Under the customer lock, each in a statement of its own (so its snapshot is taken after the
# lock was granted, and sees a withdrawal, an erasure or a card change that committed while this
# write waited): the grant still in force (no consent change can commit while the lock is held,
# and now() is the transaction's, so this stays true until the write ends) ...
STILL_GRANTED = f"""
SELECT 1 FROM consents g
WHERE g.customer_id = $1 AND g.audience = '{PURCHASES}' AND {IN_FORCE}
"""
# ... and then the card still this customer's (a card moves only with its holders locked, this
# customer among them, and a card change locks the customer too: it stays theirs until the end).
STILL_THEIRS = """
SELECT 1 FROM card_index WHERE card_hash = ANY($2::bytea[]) AND customer_id = $1 LIMIT 1
"""
# under the customer lock: the code used up (still live, still keeping purchases, this store)
USE_CODE = """
UPDATE checkout_codes k SET store = $2, keep_purchases = false
WHERE k.code_hash = ANY($1::bytea[]) AND k.customer_id = $3 AND k.expires_at > now()
  AND k.keep_purchases AND (k.store IS NULL OR k.store = $2)
RETURNING k.customer_id
"""
LOCKER = """
SELECT preference_id, rank, sealed, product_ct, attributes_ct, note_ct, source_ct, purchases,
       last_purchased_on, purchases_ct
FROM preferences WHERE customer_id = $1 ORDER BY rank
"""
CATALOGUE = """
SELECT sku, name, brand, category, status FROM catalogue_products WHERE sku = ANY($1::text[])
"""
ADD = """
INSERT INTO preferences (customer_id, preference_id, rank, status, purchases_ct, sealed,
                         product_ct, attributes_ct, note_ct, source_ct, sku_index, sku_index_of)
SELECT $1, * FROM unnest($2::uuid[], $3::int[], $4::text[], $5::bytea[], $6::bytea[],
                         $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[],
                         $12::bytea[])
"""
COUNT_AGAIN = """
UPDATE preferences p SET purchases_ct = u.sealed, purchases = NULL, last_purchased_on = NULL,
       version = version + 1, updated_at = now()
FROM unnest($2::uuid[], $3::bytea[]) AS u(preference_id, sealed)
WHERE p.customer_id = $1 AND p.preference_id = u.preference_id
"""


@dataclass
class _Kept:
    """A preference as the write sees it: its id, its words, its purchase history."""

    preference_id: uuid.UUID
    words: str
    purchases: int
    last_purchased_on: date | None
    new: bool = False
    touched: bool = False


@dataclass
class _Write:
    added: list[str] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)
    skipped: int = 0


def described(name: str, attributes: Mapping[str, str]) -> str:
    """A preference in words: "Classic Chino, waist 34 leg 34"."""
    if not attributes:
        return name
    return f"{name}, " + " ".join(f"{k} {v}" for k, v in attributes.items())


def check_dates(items: Sequence[PurchasedItem], today: date) -> None:
    """A sale's day is neither after tomorrow (a till's clock may be a time zone ahead) nor
    before 2000."""
    for n, item in enumerate(items):
        day = item.purchased_on
        if day is not None and not EARLIEST <= day <= today + timedelta(days=1):
            raise InvalidInput(
                f"items[{n}].purchased_on must be a day between {EARLIEST} and today.",
                errors=[
                    {"key": f"items[{n}].purchased_on", "source": "body", "message": "out of range"}
                ],
            )


async def _customer(
    conn: asyncpg.Connection, index: BlindIndex, store: str, card: str | None, code: str | None
) -> uuid.UUID:
    """The customer who lets this till add purchases, locked (the lock every change to a
    customer's locker or consents takes first, so a withdrawal or an erasure waits for this
    write, or this write sees it done). The card's or code's row is never locked before the
    customer: that order would deadlock with a withdrawal, which locks the customer, then ends
    codes."""
    hashes = index.all_digests("card" if card is not None else "checkout-code",
                               (card or code or "").encode())  # fmt: skip
    if card is not None:
        holders = [row["customer_id"] for row in await conn.fetch(CARD_HOLDERS, hashes)]
        granted = (
            {row["customer_id"] for row in await conn.fetch(GRANTED, holders)} if holders else set()
        )
        found = next((holder for holder in holders if holder in granted), None)
    else:
        found = await conn.fetchval(BY_CODE, hashes, store)
    if found is None:
        raise NoCustomer
    customer_id: uuid.UUID = found
    if not await lock_customer(conn, customer_id):
        raise NoCustomer  # erased meanwhile
    if card is not None:
        if await conn.fetchval(STILL_GRANTED, customer_id) is None:
            raise NoCustomer  # withdrawn meanwhile
        if await conn.fetchval(STILL_THEIRS, customer_id, hashes) is None:
            raise NoCustomer  # the card moved, or changed, meanwhile
    elif await conn.fetchval(USE_CODE, hashes, store, customer_id) is None:
        raise NoCustomer  # ended, used or bound elsewhere meanwhile
    return customer_id


def _locker(key: DataKey, rows: Sequence[asyncpg.Record]) -> dict[Match, _Kept]:
    """The customer's preferences by SKU and attributes (the first in rank order wins)."""
    kept: dict[Match, _Kept] = {}
    for row in rows:
        pid = row["preference_id"]
        content = open_content(key, row)
        product, attributes = content.product, content.attributes
        history = open_purchases(key, row)
        kept.setdefault(
            _match(product.sku, attributes),
            _Kept(
                pid,
                described(product.name, attributes),
                history.purchases,
                history.last_purchased_on,
            ),
        )
    return kept


async def record(
    conn: asyncpg.Connection,
    vault: Vault,
    till: Credential,
    card: str | None,
    code: str | None,
    items: Sequence[PurchasedItem],
) -> tuple[uuid.UUID, PurchaseResult]:
    """Add ``items`` to the locker of the customer the card or code names (call inside a
    transaction: all items or none). Raises NoCustomer when no customer lets this till."""
    assert till.store is not None  # every till key belongs to a store
    today = datetime.now(UTC).date()
    check_dates(items, today)
    customer_id = await _customer(conn, vault.index, till.store, card, code)
    key = await data_key(conn, vault, customer_id)
    rows = await conn.fetch(LOCKER, customer_id)
    kept = _locker(key, rows)
    catalogue = {
        row["sku"]: row for row in await conn.fetch(CATALOGUE, sorted({item.sku for item in items}))
    }
    count = len(rows)
    write = _Write()
    added: list[tuple[_Kept, Product, dict[str, str], str, Source]] = []
    for item in items:
        day = item.purchased_on or today
        same = _match(item.sku, item.attributes)
        match = kept.get(same)
        if match is None:
            if count >= MAX_PREFERENCES:
                write.skipped += 1
                continue
            known = catalogue.get(item.sku)
            product = (
                Product(
                    sku=item.sku,
                    name=known["name"],
                    brand=known["brand"],
                    category=known["category"],
                )
                if known is not None
                else Product(sku=item.sku, name=item.name or item.sku)
            )
            match = _Kept(uuid.uuid4(), described(product.name, item.attributes), 0, None, new=True)
            kept[same] = match
            status = known["status"] if known is not None else "available"
            added.append(
                (
                    match,
                    product,
                    dict(item.attributes),
                    status,
                    Source(kind="till", store=till.store, purchased_on=day),
                )
            )
            count += 1
            write.added.append(match.words)
        else:
            write.counted.append(match.words)
        match.purchases = min(match.purchases + item.quantity, MAX_PURCHASES)
        if match.last_purchased_on is None or day > match.last_purchased_on:
            match.last_purchased_on = day
        match.touched = True

    first_rank = len(rows) + 1
    if added:
        pids = [kept_.preference_id for kept_, *_ in added]
        await conn.execute(
            ADD,
            customer_id,
            pids,
            list(range(first_rank, first_rank + len(added))),
            [status for _, _, _, status, _ in added],
            [
                seal_purchases(key, k.preference_id, k.purchases, k.last_purchased_on)
                for k, *_ in added
            ],
            *zip(
                *(
                    written(
                        key, vault.index, k.preference_id, Content(product, attrs, None, source)
                    )
                    for k, product, attrs, _, source in added
                ),
                strict=True,
            ),
        )
    again = [k for k in kept.values() if k.touched and not k.new]
    if again:
        await conn.execute(
            COUNT_AGAIN,
            customer_id,
            [k.preference_id for k in again],
            [seal_purchases(key, k.preference_id, k.purchases, k.last_purchased_on) for k in again],
        )
    if added or again:
        await _log(
            conn,
            key,
            customer_id,
            till,
            "card" if card is not None else "code",
            [k for k in kept.values() if k.touched],
            write,
        )
        await follow(conn, vault, PreferencesChanged(customer_id))
    return customer_id, PurchaseResult(
        added=len(write.added), updated=len(write.counted), skipped=write.skipped
    )


async def _log(
    conn: asyncpg.Connection,
    key: DataKey,
    customer_id: uuid.UUID,
    till: Credential,
    via: str,
    touched: Sequence[_Kept],
    write: _Write,
) -> None:
    """The write in the customer's access log, sealed, with what was added and counted in words."""
    disclosure_id = uuid.uuid4()
    visit = Visit(
        actor_kind="pos",
        credential_id=till.id,
        actor_name=till.name,
        store=till.store,
        partner_id=None,
        purpose="purchase",
        via=via,
        preference_ids=[k.preference_id for k in touched],
        fields=[],  # the till is shown nothing: it wrote
        added=write.added,
        counted=write.counted,
    )
    sealed = seal_visit(key, disclosure_id, visit)
    await conn.execute(INSERT_SEALED, [disclosure_id], [customer_id], [sealed])
