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


class Controller(msgspec.Struct):
    name: str


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


class ConsentChange(msgspec.Struct, kw_only=True):
    consent: Consent | None
    receipt: Receipt
    ledger: LedgerEntry


class LedgerPage(msgspec.Struct):
    items: list[LedgerEntry]
    next: str | None
