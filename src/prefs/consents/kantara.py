"""A ledger record as a Kantara Consent Receipt v1.1 document.

Everything about the consent comes from the record the ledger chained when it happened (and the
record before it for the same audience, which tells a change from a first grant): never from the
consent as it stands now, nor from today's terms: the privacy policy and jurisdiction are the
ones the record kept (records written before they were kept take the settings'). How to reach
the controller comes from the settings. README, "Receipts a customer can keep",
has the mapping as a table.
"""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec import UNSET

from prefs.consents.ledger import Record
from prefs.consents.schemas import (
    KantaraAddress,
    KantaraController,
    KantaraPurpose,
    KantaraReceipt,
    KantaraService,
    Receipt,
)
from prefs.settings import Settings

# The service each audience is part of, as the receipt's `services[].service` names it.
SERVICES = {
    "pos": "Recognition at the till",
    "partner": "Reorders made or supplied by a partner you chose",
    "insights": "Anonymous demand for discontinued products",
    "purchases": "Purchases kept in your locker",
}
# The specification's purpose categories (its appendix, written as its example writes them) that
# fit each audience; the receipt's W3C DPV purposes follow them. Counting demand anonymously fits
# none of them, so insights names its DPV purpose only.
PURPOSE_CATEGORIES = {
    "pos": ["5 - Personalize Experience"],
    "partner": ["2 - Contracted Service"],
    "insights": [],
    "purchases": ["5 - Personalize Experience"],
}
FIELD_WORDS = {
    "product": "which products",
    "attributes": "your sizes and details",
    "note": "your notes",
}
HOW = "on the prefs page or an app, signed in as themselves"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _purpose(receipt: Receipt, text: str) -> str:
    """The purpose, with what it covers: the fields shown and of which preferences."""
    if receipt.recipient.kind == "purchases":
        return f"{text}. Shown nothing: tills add what you buy."
    fields = [FIELD_WORDS.get(field, field) for field in receipt.fields]
    shown = ", ".join(fields[:-1]) + (" and " if len(fields) > 1 else "") + fields[-1]
    which = (
        "all your preferences, including ones you add later"
        if receipt.preferences == "all"
        else f"{len(receipt.preferences)} preferences you chose"
    )
    return f"{text}. Shown: {shown}, of {which}."


def _collection_method(record: Record) -> str:
    receipt = record.receipt
    if receipt.state == "ConsentWithdrawn":
        return f"Withdrawn by the customer {HOW}"
    if receipt.state == "ConsentExpired":
        return "Ended by the service at the end the customer had set when giving it"
    if record.replaces is not None:
        return f"Changed by the customer {HOW}; replaces receipt {record.replaces}"
    return f"Given by the customer {HOW}"


def _termination(receipt: Receipt) -> str:
    if receipt.state == "ConsentWithdrawn":
        return f"Ended: withdrawn at {_when(receipt.timestamp)}"
    if receipt.state == "ConsentExpired":
        assert receipt.expires_at is not None
        return f"Ended: expired at {_when(receipt.expires_at)}, the end the customer had set"
    if receipt.expires_at is not None:
        return f"At {_when(receipt.expires_at)}, or when the customer withdraws it if sooner"
    return "When the customer withdraws it"


def document(record: Record, settings: Settings) -> KantaraReceipt:
    """The Kantara v1.1 document of one ledger record."""
    receipt = record.receipt
    kind = receipt.recipient.kind
    purposes = [
        KantaraPurpose(
            purpose=_purpose(receipt, purpose.purpose),
            purpose_category=PURPOSE_CATEGORIES[kind] + [f"dpv:{name}" for name in purpose.dpv],
            consent_type=purpose.consent_type,
            pii_category=[f"pd:{category}" for category in receipt.pii_categories],
            primary_purpose=purpose.primary_purpose,
            termination=_termination(receipt),
            third_party_disclosure=purpose.third_party_disclosure,
            third_party_name=receipt.recipient.name if purpose.third_party_disclosure else UNSET,
        )
        for purpose in receipt.purposes
    ]
    return KantaraReceipt(
        version=receipt.version,
        jurisdiction=receipt.controller.jurisdiction or settings.jurisdiction,
        consent_timestamp=int(receipt.timestamp.timestamp()),
        collection_method=_collection_method(record),
        consent_receipt_id=str(receipt.receipt_id),
        language=receipt.language,
        pii_principal_id=str(receipt.principal),
        pii_controllers=[
            KantaraController(
                pii_controller=receipt.controller.name,
                contact=settings.controller_contact,
                address=KantaraAddress(street_address=settings.controller_address),
                email=settings.controller_email,
                phone=settings.controller_phone,
                pii_controller_url=settings.controller_url or UNSET,
            )
        ],
        policy_url=receipt.controller.policy_url or settings.policy_url,
        services=[KantaraService(service=SERVICES[kind], purposes=purposes)],
        sensitive=receipt.sensitive,
        spi_cat=[],
    )
