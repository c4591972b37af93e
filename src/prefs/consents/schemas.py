"""Consent grants, receipts and the ledger, after Kantara Consent Receipt v1.1 / ISO/IEC TS 27560."""

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from prefs.grants import Fields, PreferenceIds

State = Literal["ConsentGiven", "ConsentWithdrawn", "ConsentExpired"]


class ConsentGrant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``fields`` is required for every audience that is shown something, and refused for
    ``purchases`` (shown nothing); ``preferences`` is "all" when not sent."""

    fields: Fields | UnsetType = UNSET
    preferences: Literal["all"] | PreferenceIds | UnsetType = UNSET
    expires_at: datetime | None = None


class Consent(msgspec.Struct, kw_only=True):
    audience: str
    recipient: str
    fields: list[str]
    preferences: Literal["all"] | list[UUID]
    expires_at: datetime | None
    granted_at: datetime
    updated_at: datetime
    receipt_id: UUID
    reference: str | None = None


class ConsentList(msgspec.Struct):
    items: list[Consent]
    # one list shape everywhere, {items, next}: every item fits one page, so next is null
    next: str | None = None


class Controller(msgspec.Struct, kw_only=True):
    """Who the consent is given to, and the terms it is given under: the privacy policy and the
    jurisdiction in force at that moment (records written before they were kept hold only the
    name; their Kantara receipts take the settings')."""

    name: str
    policy_url: str | UnsetType = UNSET
    jurisdiction: str | UnsetType = UNSET


class Recipient(msgspec.Struct):
    kind: Literal["pos", "partner", "insights", "purchases"]
    name: str
    id: UUID | None = None


class Purpose(msgspec.Struct):
    purpose: str
    dpv: list[str]
    consent_type: str
    primary_purpose: bool
    termination: str
    third_party_disclosure: bool


class Receipt(msgspec.Struct, kw_only=True):
    """The consent receipt; its canonical JSON is what the ledger chains."""

    version: str = "KI-CR-v1.1.0"
    receipt_id: UUID
    timestamp: datetime
    collection_method: str
    language: str = "en"
    principal: UUID
    controller: Controller
    audience: str
    recipient: Recipient
    purposes: list[Purpose]
    pii_categories: list[str]
    fields: list[str]
    preferences: Literal["all"] | list[UUID]
    expires_at: datetime | None
    state: State
    sensitive: bool = False


class LedgerEntry(msgspec.Struct, kw_only=True):
    seq: int
    recorded_at: datetime
    receipt: Receipt
    prev_hash: str
    hash: str


class CancelledReorder(msgspec.Struct, kw_only=True):
    """A reorder to the partner that the change cancelled: not accepted yet, and the grant no
    longer lets the partner see its preference. ``preference_id`` is null once deleted."""

    id: UUID
    preference_id: UUID | None
    quantity: int
    origin: Literal["customer", "partner"]  # partner: one of its proposals


class ConsentChange(msgspec.Struct, kw_only=True):
    """A grant or withdrawal: the consent in force after it (null once withdrawn), its receipt
    and ledger record, and what it cancelled (empty for every audience but a partner)."""

    consent: Consent | None
    receipt: Receipt
    ledger: LedgerEntry
    cancelled_reorders: list[CancelledReorder] = msgspec.field(default_factory=list)


class LedgerPage(msgspec.Struct):
    items: list[LedgerEntry]
    next: str | None


# --- the receipt as a Kantara Consent Receipt v1.1 document (its JSON names, camelCase) --------


class KantaraAddress(msgspec.Struct, rename="camel"):
    """The controller's postal address (schema.org PostalAddress, as the specification's
    example writes it): one line, as the operator sets it."""

    street_address: str


class KantaraController(msgspec.Struct, kw_only=True, rename="camel"):
    pii_controller: str
    contact: str
    address: KantaraAddress
    email: str
    phone: str
    pii_controller_url: str | UnsetType = UNSET


class KantaraPurpose(msgspec.Struct, kw_only=True, rename="camel"):
    purpose: str
    purpose_category: list[str]
    consent_type: str
    pii_category: list[str]
    primary_purpose: bool
    termination: str
    third_party_disclosure: bool
    third_party_name: str | UnsetType = UNSET  # named when third_party_disclosure is true


class KantaraService(msgspec.Struct, kw_only=True):
    service: str
    purposes: list[KantaraPurpose]


class KantaraReceipt(msgspec.Struct, kw_only=True, rename="camel"):
    """A consent receipt as the Kantara Initiative's Consent Receipt Specification v1.1 writes
    it, derived from one ledger record (the mapping: README, "Receipts a customer can keep")."""

    version: str
    jurisdiction: str
    consent_timestamp: int  # seconds since the epoch (the specification's NumericDate)
    collection_method: str
    consent_receipt_id: str = msgspec.field(name="consentReceiptID")
    language: str
    pii_principal_id: str
    pii_controllers: list[KantaraController]
    policy_url: str
    services: list[KantaraService]
    sensitive: bool
    spi_cat: list[str]


class ReceiptKey(msgspec.Struct, kw_only=True):
    """A public key that signs receipts, as a JWK (RFC 7517; OKP Ed25519, RFC 8037)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]


class ReceiptKeys(msgspec.Struct):
    """A JWK set: every key a receipt the service signed may name."""

    keys: list[ReceiptKey]
