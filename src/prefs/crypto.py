"""Keyrings, envelope encryption, blind indexes and pairwise references.

Knows nothing of HTTP or SQL. Two independent keyrings:

* the master keyring (``PREFS_MASTER_KEYS``) wraps one random 256-bit data key per customer;
  the data key encrypts that customer's fields;
* the index keyring (``PREFS_INDEX_KEY``) derives the HMAC keys for blind indexes (cards,
  checkout codes, subjects, preferences' SKUs), pairwise partner references and the
  consent-ledger MAC.

A third, the receipt keyring (``PREFS_RECEIPT_KEYS``), holds Ed25519 private keys (each 32-byte
key is the key's seed) that sign consent receipts a customer can keep and anyone can verify.

All are written ``VERSION:BASE64KEY[,VERSION:BASE64KEY...]`` with the primary first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT_V1 = 0x01
_HEADER = struct.Struct(">BI")  # format byte, key generation / master key version
_LENGTH = struct.Struct(">H")  # each part of associated data is length-prefixed
_VERSION = struct.Struct(">I")  # the index key version a SKU index begins with
_NONCE_BYTES = 12
_TAG_BYTES = 16
_MIN_LENGTH = _HEADER.size + _NONCE_BYTES + _TAG_BYTES
DATA_KEY_BYTES = 32
_MAX_VERSION = 0xFFFFFFFF  # the header holds it in four bytes
_URLSAFE = str.maketrans("-_", "+/")


class KeyringError(ValueError):
    """A keyring setting cannot be parsed; the message names the setting, never a key."""


class DecryptionError(Exception):
    """Any ciphertext that does not authenticate: tampered, moved, truncated or unknown key."""

    def __init__(self) -> None:
        super().__init__("ciphertext rejected")


@dataclass(frozen=True, slots=True)
class Keyring:
    """Versioned 256-bit keys; the first one given is the primary."""

    primary: int
    keys: dict[int, bytes]

    @classmethod
    def parse(cls, setting: str, name: str) -> Keyring:
        keys: dict[int, bytes] = {}
        order: list[int] = []
        for entry in filter(None, (part.strip() for part in setting.split(","))):
            version_text, sep, key_text = (part.strip() for part in entry.partition(":"))
            if not sep or not version_text.isascii() or not version_text.isdigit():
                raise KeyringError(f"{name}: each entry must be VERSION:BASE64KEY")
            try:
                padded = key_text.translate(_URLSAFE) + "=" * (-len(key_text) % 4)
                key = base64.b64decode(padded, validate=True)  # strict: no stray characters
            except (binascii.Error, ValueError):
                raise KeyringError(f"{name}: key {version_text} is not base64") from None
            if len(key) != 32:
                raise KeyringError(
                    f"{name}: key {version_text} must be 32 bytes (it is {len(key)})"
                )
            version = int(version_text)
            if version in keys or not 1 <= version <= _MAX_VERSION:
                raise KeyringError(f"{name}: version {version} is repeated or out of range")
            keys[version] = key
            order.append(version)
        if not order:
            raise KeyringError(f"{name}: no key given")
        return cls(primary=order[0], keys=keys)

    def __repr__(self) -> str:
        return f"Keyring(primary={self.primary}, versions={sorted(self.keys)})"


def _aad(*parts: bytes) -> bytes:
    """Unambiguous associated data: each part length-prefixed."""
    return b"".join([_LENGTH.pack(len(part)) + part for part in parts])


def _seal(aead: AESGCM, version: int, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    header = _HEADER.pack(FORMAT_V1, version)
    return header + nonce + aead.encrypt(nonce, plaintext, header + aad)


def _header(blob: bytes) -> int:
    """The key version of a v1 blob, or DecryptionError for anything else."""
    if len(blob) < _MIN_LENGTH:
        raise DecryptionError
    fmt, version = _HEADER.unpack_from(blob)
    if fmt != FORMAT_V1:
        raise DecryptionError
    return int(version)


# where a v1 ciphertext's nonce lies (bytes from its start, and how many): SQL reads it there
NONCE_AT, NONCE_BYTES = _HEADER.size, _NONCE_BYTES


def nonce_of(blob: bytes) -> bytes:
    """The random nonce of a v1 ciphertext: it names that one encryption."""
    return blob[NONCE_AT : NONCE_AT + NONCE_BYTES]


def _open(aead: AESGCM, blob: bytes, aad: bytes) -> bytes:
    nonce = blob[_HEADER.size : _HEADER.size + _NONCE_BYTES]
    try:
        return aead.decrypt(nonce, blob[_HEADER.size + _NONCE_BYTES :], blob[: _HEADER.size] + aad)
    except InvalidTag:
        raise DecryptionError from None


_FIELD_CONTEXT = b"prefs.field.v1"
_places: dict[tuple[str, str], bytes] = {}


def _place(table: str, column: str) -> bytes:
    """The table and column parts of a field's associated data (few distinct: cached)."""
    place = _places.get((table, column))
    if place is None:
        place = _places.setdefault((table, column), _aad(table.encode(), column.encode()))
    return place


class DataKey:
    """A customer's unwrapped data key: encrypts and decrypts that customer's fields.

    Each ciphertext is bound to where it lives (customer, table, column, row): its associated
    data is ``_aad(b"prefs.field.v1", customer_id, table, column, row_id)``, so it decrypts
    nowhere else. The parts that repeat are encoded once.
    """

    __slots__ = ("_aead", "_prefix", "customer_id", "generation")

    def __init__(self, customer_id: uuid.UUID, generation: int, key: bytes) -> None:
        self.customer_id = customer_id
        self.generation = generation
        self._aead = AESGCM(key)
        self._prefix = _aad(_FIELD_CONTEXT, customer_id.bytes)

    def _field_aad(self, table: str, column: str, row_id: object) -> bytes:
        row = str(row_id).encode()
        return self._prefix + _place(table, column) + _LENGTH.pack(len(row)) + row

    def encrypt(self, plaintext: bytes, table: str, column: str, row_id: object) -> bytes:
        return _seal(self._aead, self.generation, plaintext, self._field_aad(table, column, row_id))

    def decrypt(self, blob: bytes, table: str, column: str, row_id: object) -> bytes:
        if _header(blob) != self.generation:
            raise DecryptionError
        return _open(self._aead, blob, self._field_aad(table, column, row_id))

    def __repr__(self) -> str:
        return f"DataKey(customer_id={self.customer_id}, generation={self.generation})"


class Envelope:
    """Wraps and unwraps per-customer data keys under the master keyring."""

    def __init__(self, master: Keyring, cache_size: int = 4096) -> None:
        self.master = master
        self._cache: OrderedDict[bytes, DataKey] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @staticmethod
    def _wrap_aad(customer_id: uuid.UUID, generation: int, master_version: int) -> bytes:
        return _aad(
            b"prefs.data-key.v1",
            customer_id.bytes,
            struct.pack(">II", generation, master_version),
        )

    def new_data_key(self, customer_id: uuid.UUID, generation: int = 1) -> tuple[DataKey, bytes]:
        """A fresh random data key and its wrapping under the primary master key."""
        key = os.urandom(DATA_KEY_BYTES)
        return DataKey(customer_id, generation, key), self.wrap(customer_id, generation, key)

    def wrap(self, customer_id: uuid.UUID, generation: int, key: bytes) -> bytes:
        version = self.master.primary
        aad = self._wrap_aad(customer_id, generation, version)
        return _seal(AESGCM(self.master.keys[version]), version, key, aad)

    @staticmethod
    def master_version(wrapped: bytes) -> int:
        return _header(wrapped)

    def _unwrap_key(self, customer_id: uuid.UUID, generation: int, wrapped: bytes) -> bytes:
        version = _header(wrapped)
        master_key = self.master.keys.get(version)
        if master_key is None:
            raise DecryptionError
        aad = self._wrap_aad(customer_id, generation, version)
        key = _open(AESGCM(master_key), wrapped, aad)
        if len(key) != DATA_KEY_BYTES:
            raise DecryptionError
        return key

    def unwrap(self, customer_id: uuid.UUID, generation: int, wrapped: bytes) -> DataKey:
        """The data key inside ``wrapped``; cached by the exact wrapped bytes."""
        cache_key = customer_id.bytes + struct.pack(">I", generation) + wrapped
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        data_key = DataKey(
            customer_id, generation, self._unwrap_key(customer_id, generation, wrapped)
        )
        with self._lock:
            self._cache[cache_key] = data_key
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return data_key

    def rewrap(self, customer_id: uuid.UUID, generation: int, wrapped: bytes) -> bytes:
        """The same data key wrapped under the current primary master key."""
        return self.wrap(
            customer_id, generation, self._unwrap_key(customer_id, generation, wrapped)
        )

    def forget(self, customer_id: uuid.UUID) -> None:
        """Drop every cached data key of a customer (erasure)."""
        prefix = customer_id.bytes
        with self._lock:
            for cache_key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[cache_key]


class ServiceCipher:
    """Encrypts service-owned (not customer-owned) data under a key derived from a keyring."""

    def __init__(self, master: Keyring, purpose: str) -> None:
        self.master = master
        self._aead = {
            version: AESGCM(
                HKDF(
                    algorithm=hashes.SHA256(),
                    length=32,
                    salt=b"prefs.service.v1",
                    info=purpose.encode(),
                ).derive(key)
            )
            for version, key in master.keys.items()
        }

    def encrypt(self, plaintext: bytes, context: bytes) -> bytes:
        return _seal(self._aead[self.master.primary], self.master.primary, plaintext, _aad(context))

    def decrypt(self, blob: bytes, context: bytes) -> bytes:
        aead = self._aead.get(_header(blob))
        if aead is None:
            raise DecryptionError
        return _open(aead, blob, _aad(context))


class BlindIndex:
    """Keyed HMAC lookups, under keys derived from the index keyring only."""

    PURPOSES = (
        "card",
        "checkout-code",
        "subject",
        "pairwise",
        "ledger",
        "demand",
        "demand-group",
        "idempotency-key",
        "idempotency-request",
        "sku",
    )

    def __init__(self, index: Keyring) -> None:
        self.index = index
        self._keys = {
            (purpose, version): HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=b"prefs.blind-index.v1",
                info=purpose.encode(),
            ).derive(key)
            for version, key in index.keys.items()
            for purpose in self.PURPOSES
        }
        self._versions = [index.primary, *sorted(v for v in index.keys if v != index.primary)]

    @property
    def primary(self) -> int:
        return self.index.primary

    @property
    def versions(self) -> list[int]:
        """Every version, primary first: the order in which lookups try them."""
        return list(self._versions)

    def digest(self, purpose: str, value: bytes, version: int | None = None) -> bytes:
        key = self._keys[(purpose, self.index.primary if version is None else version)]
        return hmac.digest(key, value, "sha256")  # OpenSSL's one-shot HMAC: same bytes, faster

    def all_digests(self, purpose: str, value: bytes) -> list[bytes]:
        """The digest under every index key version (for lookups during a rotation)."""
        return [self.digest(purpose, value, version) for version in self._versions]

    def card(self, card: str, version: int | None = None) -> bytes:
        return self.digest("card", card.encode(), version)

    def subject(self, issuer: str, subject: str, version: int | None = None) -> bytes:
        return self.digest("subject", issuer.encode() + b"\x00" + subject.encode(), version)

    def subjects(self, issuer: str, subject: str) -> dict[int, bytes]:
        """The subject's hash under every index key version, primary first."""
        return {version: self.subject(issuer, subject, version) for version in self.versions}

    def checkout_code(self, code: str, version: int | None = None) -> bytes:
        return self.digest("checkout-code", code.encode(), version)

    def sku(self, sku: str | None, preference_id: uuid.UUID, version: int | None = None) -> bytes:
        """A preference's SKU index: the index key's version (4 bytes), then the keyed digest of
        the SKU. A product without a SKU is indexed by its preference id instead: it looks like
        any other and matches no SKU."""
        value = b"sku:" + sku.encode() if sku is not None else b"none:" + preference_id.bytes
        return self._sku_index(value, self.index.primary if version is None else version)

    def skus(self, skus: Iterable[str]) -> list[bytes]:
        """The indexes of ``skus`` under every index key version (what an import looks for)."""
        return [
            self._sku_index(b"sku:" + sku.encode(), version)
            for sku in skus
            for version in self._versions
        ]

    def _sku_index(self, value: bytes, version: int) -> bytes:
        return _VERSION.pack(version) + self.digest("sku", value, version)

    def pairwise(self, partner_id: uuid.UUID, customer_id: uuid.UUID) -> str:
        """A partner's own stable reference for a customer; unlinkable across partners."""
        raw = self.digest("pairwise", partner_id.bytes + customer_id.bytes)
        return base64.urlsafe_b64encode(raw[:18]).decode()


class ReceiptSigner:
    """Signs receipts as compact JWS (RFC 7515, EdDSA over Ed25519, RFC 8037) with the receipt
    keyring's primary key, and publishes the public key of every version as a JWK set, so that
    a receipt signed before a rotation still verifies while its key is listed.

    The header names the key's version as ``kid`` and is typed ``JOSE`` (a compact JWS that is
    not a JWT: no token verifier takes a receipt for an access token).
    """

    ALGORITHM = "EdDSA"

    def __init__(self, receipt: Keyring) -> None:
        self.keyring = receipt
        self._keys = {
            version: Ed25519PrivateKey.from_private_bytes(seed)
            for version, seed in receipt.keys.items()
        }
        self._jws = jwt.PyJWS(algorithms=[self.ALGORITHM])

    def sign(self, payload: bytes) -> str:
        """``payload`` as a compact JWS under the primary key."""
        primary = self.keyring.primary
        return self._jws.encode(
            payload,
            self._keys[primary],
            algorithm=self.ALGORITHM,
            headers={"kid": str(primary), "typ": "JOSE"},
        )

    def public_keys(self) -> list[dict[str, Any]]:
        """Every version's public key as an OKP JWK (RFC 8037), the primary first."""
        versions = [self.keyring.primary, *sorted(set(self._keys) - {self.keyring.primary})]
        return [
            {
                **jwt.algorithms.OKPAlgorithm.to_jwk(
                    self._keys[version].public_key(), as_dict=True
                ),
                "kid": str(version),
                "use": "sig",
                "alg": self.ALGORITHM,
            }
            for version in versions
        ]

    def __repr__(self) -> str:
        return f"ReceiptSigner({self.keyring!r})"


def api_key_hash(api_key: str) -> bytes:
    """API keys are 256-bit random secrets: a plain SHA-256 is a sufficient verifier."""
    return hashlib.sha256(api_key.encode()).digest()


@dataclass(frozen=True, slots=True)
class Vault:
    """The two keyrings in use: data-key envelopes and blind indexes."""

    envelope: Envelope
    index: BlindIndex
    demand_labels: ServiceCipher
    page_cursors: ServiceCipher  # under the index keyring: cursors are not customer data

    @classmethod
    def from_settings(cls, master_keys: str, index_keys: str) -> Vault:
        master = Keyring.parse(master_keys, "PREFS_MASTER_KEYS")
        index = Keyring.parse(index_keys, "PREFS_INDEX_KEY")
        return cls(
            envelope=Envelope(master),
            index=BlindIndex(index),
            demand_labels=ServiceCipher(master, "demand-labels"),
            page_cursors=ServiceCipher(index, "page-cursors"),
        )
