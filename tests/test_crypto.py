"""Envelope encryption, field ciphertexts and blind indexes: privacy promises 1 and 2 of
docs/product.md."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import traceback
import uuid

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from prefs.crypto import (
    BlindIndex,
    DataKey,
    DecryptionError,
    Envelope,
    Keyring,
    KeyringError,
    Vault,
)


def key_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def keyring(*versions: tuple[int, bytes]) -> Keyring:
    return Keyring.parse(",".join(f"{v}:{key_text(k)}" for v, k in versions), "PREFS_MASTER_KEYS")


MASTER_1 = os.urandom(32)
MASTER_2 = os.urandom(32)
INDEX_1 = os.urandom(32)
INDEX_2 = os.urandom(32)

uuids = st.uuids()
names = st.text(min_size=0, max_size=40)
plaintexts = st.binary(max_size=2048)


def data_key(
    customer_id: uuid.UUID | None = None, key: bytes | None = None, generation: int = 1
) -> DataKey:
    return DataKey(customer_id or uuid.uuid4(), generation, key or os.urandom(32))


# Round trips


@given(customer_id=uuids, plaintext=plaintexts, table=names, column=names, row=names)
def test_a_field_decrypts_to_what_was_encrypted(customer_id, plaintext, table, column, row):
    key = data_key(customer_id)
    assert key.decrypt(key.encrypt(plaintext, table, column, row), table, column, row) == plaintext


@given(
    customer_id=uuids, generation=st.integers(1, 2**31), secret=st.binary(min_size=32, max_size=32)
)
def test_a_wrapped_data_key_unwraps_to_the_same_key(customer_id, generation, secret):
    envelope = Envelope(keyring((1, MASTER_1)))
    wrapped = envelope.wrap(customer_id, generation, secret)
    assert secret not in wrapped
    unwrapped = envelope.unwrap(customer_id, generation, wrapped)
    sealed = DataKey(customer_id, generation, secret).encrypt(b"classic chino", "t", "c", "r")
    assert unwrapped.decrypt(sealed, "t", "c", "r") == b"classic chino"


@given(customer_id=uuids, plaintext=plaintexts)
def test_a_new_data_key_encrypts_what_its_unwrapped_copy_decrypts(customer_id, plaintext):
    envelope = Envelope(keyring((1, MASTER_1)))
    key, wrapped = envelope.new_data_key(customer_id)
    fresh = Envelope(keyring((1, MASTER_1)))  # no cache: really unwraps
    sealed = key.encrypt(plaintext, "preferences", "note", "row-1")
    assert (
        fresh.unwrap(customer_id, key.generation, wrapped).decrypt(
            sealed, "preferences", "note", "row-1"
        )
        == plaintext
    )


# Ciphertexts moved elsewhere


def test_a_field_moved_to_another_customer_does_not_decrypt():
    secret = os.urandom(32)
    alice, bob = data_key(key=secret), data_key(key=secret)  # even with the very same key bytes
    sealed = alice.encrypt(b"waist 34 leg 34", "preferences", "attributes", "p1")
    with pytest.raises(DecryptionError):
        bob.decrypt(sealed, "preferences", "attributes", "p1")


@pytest.mark.parametrize(
    "address",
    [
        ("customers", "attributes", "p1"),  # another table
        ("preferences", "note", "p1"),  # another column
        ("preferences", "attributes", "p2"),  # another row
        ("preferencesattributes", "", "p1"),  # the same bytes, split differently
    ],
    ids=["table", "column", "row", "boundary"],
)
def test_a_field_moved_to_another_table_column_or_row_does_not_decrypt(address):
    key = data_key()
    sealed = key.encrypt(b"waist 34 leg 34", "preferences", "attributes", "p1")
    assert key.decrypt(sealed, "preferences", "attributes", "p1") == b"waist 34 leg 34"
    with pytest.raises(DecryptionError):
        key.decrypt(sealed, *address)


@given(plaintext=plaintexts, a=st.tuples(names, names, names), b=st.tuples(names, names, names))
def test_a_field_decrypts_only_at_its_own_address(plaintext, a, b):
    key = data_key()
    sealed = key.encrypt(plaintext, *a)
    if a == b:
        assert key.decrypt(sealed, *b) == plaintext
    else:
        with pytest.raises(DecryptionError):
            key.decrypt(sealed, *b)


def test_a_field_under_another_data_key_generation_does_not_decrypt():
    customer_id, secret = uuid.uuid4(), os.urandom(32)
    sealed = DataKey(customer_id, 1, secret).encrypt(b"khaki", "preferences", "note", "p1")
    with pytest.raises(DecryptionError):
        DataKey(customer_id, 2, secret).decrypt(sealed, "preferences", "note", "p1")


def test_a_wrapped_key_moved_to_another_customer_or_generation_does_not_unwrap():
    envelope = Envelope(keyring((1, MASTER_1)))
    alice = uuid.uuid4()
    _, wrapped = envelope.new_data_key(alice)
    with pytest.raises(DecryptionError):
        envelope.unwrap(uuid.uuid4(), 1, wrapped)
    with pytest.raises(DecryptionError):
        envelope.unwrap(alice, 2, wrapped)


# Tampering


def every_single_byte_flip(blob: bytes):
    for position in range(len(blob)):
        for mask in range(1, 256):
            tampered = bytearray(blob)
            tampered[position] ^= mask
            yield bytes(tampered)


def test_every_single_byte_flip_of_a_field_fails():
    key = data_key()
    sealed = key.encrypt(b"34/34", "preferences", "attributes", "p1")
    tampered_versions = 0
    for tampered in every_single_byte_flip(sealed):
        with pytest.raises(DecryptionError):
            key.decrypt(tampered, "preferences", "attributes", "p1")
        tampered_versions += 1
    assert tampered_versions == len(sealed) * 255


def test_every_truncation_and_extension_of_a_field_fails():
    key = data_key()
    sealed = key.encrypt(b"34/34", "preferences", "attributes", "p1")
    for length in range(len(sealed)):
        with pytest.raises(DecryptionError):
            key.decrypt(sealed[:length], "preferences", "attributes", "p1")
    for suffix in (b"\x00", os.urandom(16)):
        with pytest.raises(DecryptionError):
            key.decrypt(sealed + suffix, "preferences", "attributes", "p1")


def test_every_single_byte_flip_and_truncation_of_a_wrapped_key_fails():
    envelope = Envelope(keyring((1, MASTER_1)))
    customer_id = uuid.uuid4()
    _, wrapped = envelope.new_data_key(customer_id)
    for tampered in every_single_byte_flip(wrapped):
        with pytest.raises(DecryptionError):
            envelope.unwrap(customer_id, 1, tampered)
    for length in range(len(wrapped)):
        with pytest.raises(DecryptionError):
            envelope.unwrap(customer_id, 1, wrapped[:length])


@given(plaintext=plaintexts, data=st.data())
def test_any_tampered_field_fails(plaintext, data):
    key = data_key()
    sealed = key.encrypt(plaintext, "preferences", "product", "p1")
    position = data.draw(st.integers(0, len(sealed) - 1), label="position")
    mask = data.draw(st.integers(1, 255), label="mask")
    tampered = bytearray(sealed)
    tampered[position] ^= mask
    with pytest.raises(DecryptionError):
        key.decrypt(bytes(tampered), "preferences", "product", "p1")
    cut = data.draw(st.integers(0, len(sealed) - 1), label="cut")
    with pytest.raises(DecryptionError):
        key.decrypt(sealed[:cut], "preferences", "product", "p1")


@given(garbage=st.binary(max_size=200))
def test_arbitrary_bytes_are_rejected_with_the_one_error(garbage):
    with pytest.raises(DecryptionError) as raised:
        data_key().decrypt(garbage, "preferences", "product", "p1")
    assert str(raised.value) == "ciphertext rejected"
    with pytest.raises(DecryptionError):
        Envelope(keyring((1, MASTER_1))).unwrap(uuid.uuid4(), 1, garbage)


# Randomised encryption


def test_the_same_value_encrypts_differently_twice():
    key = data_key()
    first = key.encrypt(b"Classic Chino", "preferences", "product", "p1")
    second = key.encrypt(b"Classic Chino", "preferences", "product", "p1")
    assert first != second
    assert first[5:17] != second[5:17]  # fresh nonces
    assert key.decrypt(first, "preferences", "product", "p1") == key.decrypt(
        second, "preferences", "product", "p1"
    )


def test_the_same_data_key_wraps_differently_twice():
    envelope = Envelope(keyring((1, MASTER_1)))
    customer_id, secret = uuid.uuid4(), os.urandom(32)
    assert envelope.wrap(customer_id, 1, secret) != envelope.wrap(customer_id, 1, secret)


def test_a_field_carries_the_versioned_format():
    key = data_key(generation=7)
    sealed = key.encrypt(b"", "t", "c", "r")
    assert sealed[0] == 0x01  # format byte
    assert int.from_bytes(sealed[1:5], "big") == 7  # key generation
    assert len(sealed) == 5 + 12 + 16  # header, 96-bit nonce, empty ciphertext, tag


def _stored_aad(customer_id: uuid.UUID, table: str, column: str, row: str) -> bytes:
    """The field associated data as stored ciphertexts were made: each part length-prefixed."""
    parts = [b"prefs.field.v1", customer_id.bytes, table.encode(), column.encode(), row.encode()]
    return b"".join(len(part).to_bytes(2, "big") + part for part in parts)


@given(customer_id=uuids, plaintext=plaintexts, table=names, column=names, row=names)
def test_field_associated_data_keeps_the_stored_layout(customer_id, plaintext, table, column, row):
    """Ciphertexts already stored keep decrypting, and new ones decrypt with the stored layout."""
    secret = os.urandom(32)
    key = DataKey(customer_id, 3, secret)
    header = bytes([0x01]) + (3).to_bytes(4, "big")
    nonce = os.urandom(12)
    aad = _stored_aad(customer_id, table, column, row)
    stored = header + nonce + AESGCM(secret).encrypt(nonce, plaintext, header + aad)
    assert key.decrypt(stored, table, column, row) == plaintext
    sealed = key.encrypt(plaintext, table, column, row)
    assert AESGCM(secret).decrypt(sealed[5:17], sealed[17:], sealed[:5] + aad) == plaintext


# Master key versions and rotation


def test_an_unknown_master_key_version_fails_closed():
    customer_id = uuid.uuid4()
    _, wrapped = Envelope(keyring((2, MASTER_2))).new_data_key(customer_id)
    with pytest.raises(DecryptionError):
        Envelope(keyring((1, MASTER_1))).unwrap(customer_id, 1, wrapped)


def test_a_known_version_number_with_another_key_fails_closed():
    customer_id = uuid.uuid4()
    _, wrapped = Envelope(keyring((1, MASTER_1))).new_data_key(customer_id)
    with pytest.raises(DecryptionError):
        Envelope(keyring((1, MASTER_2))).unwrap(customer_id, 1, wrapped)


def test_a_key_wrapped_under_v1_unwraps_after_v2_becomes_primary_and_rewrap_moves_it_to_v2():
    customer_id = uuid.uuid4()
    before = Envelope(keyring((1, MASTER_1)))
    key, wrapped_v1 = before.new_data_key(customer_id)
    sealed = key.encrypt(b"the old cut", "preferences", "note", "p1")
    assert Envelope.master_version(wrapped_v1) == 1

    rotated = Envelope(keyring((2, MASTER_2), (1, MASTER_1)))
    assert rotated.unwrap(customer_id, 1, wrapped_v1).decrypt(
        sealed, "preferences", "note", "p1"
    ) == (b"the old cut")
    wrapped_v2 = rotated.rewrap(customer_id, 1, wrapped_v1)
    assert Envelope.master_version(wrapped_v2) == 2

    only_v2 = Envelope(keyring((2, MASTER_2)))
    assert only_v2.unwrap(customer_id, 1, wrapped_v2).decrypt(
        sealed, "preferences", "note", "p1"
    ) == (b"the old cut")
    with pytest.raises(DecryptionError):
        only_v2.unwrap(customer_id, 1, wrapped_v1)


def test_new_data_keys_are_wrapped_under_the_primary_master_key():
    envelope = Envelope(keyring((2, MASTER_2), (1, MASTER_1)))
    _, wrapped = envelope.new_data_key(uuid.uuid4())
    assert Envelope.master_version(wrapped) == 2


# Keyring settings


SECRET_KEY = key_text(b"S" * 32)  # "U1NT..." — must never appear in a message


@pytest.mark.parametrize(
    "setting",
    [
        "",
        " , ",
        SECRET_KEY,  # no version
        f"x:{SECRET_KEY}",  # version not a number
        f"0:{SECRET_KEY}",  # version below 1
        f"1:{SECRET_KEY},1:{SECRET_KEY}",  # repeated version
        f"1:{SECRET_KEY[:-4]}",  # too short
        f"1:{SECRET_KEY}{SECRET_KEY}",  # too long
        f"1:{SECRET_KEY[:-1]}*",  # not base64
        f"1:{SECRET_KEY[:-2]}",  # bad padding
        f"1:{SECRET_KEY}=",  # excess padding
        f"1:{SECRET_KEY},2:{SECRET_KEY}{SECRET_KEY}",  # two keys run together
        f"²:{SECRET_KEY}",  # a digit, but not an ASCII one
        f"-1:{SECRET_KEY}",
        f"4294967296:{SECRET_KEY}",  # does not fit the four-byte version in the header
    ],
)
def test_a_bad_keyring_setting_is_named_and_its_key_material_never_echoed(setting):
    with pytest.raises(KeyringError) as raised:
        Keyring.parse(setting, "PREFS_MASTER_KEYS")
    message = str(raised.value)
    assert message.startswith("PREFS_MASTER_KEYS: ")
    shown = "".join(traceback.format_exception(raised.value)) + repr(raised.value)
    for fragment in (SECRET_KEY[:12], SECRET_KEY[-12:], SECRET_KEY[8:20]):
        assert fragment not in shown


def test_keyrings_and_data_keys_never_print_their_keys():
    ring = keyring((2, MASTER_2), (1, MASTER_1))
    key = DataKey(uuid.uuid4(), 1, MASTER_1)
    for shown in (repr(ring), str(ring), repr(key), str(key)):
        for secret in (MASTER_1, MASTER_2):
            assert key_text(secret)[:12] not in shown
            assert secret.hex()[:12] not in shown
            assert repr(secret)[2:14] not in shown


def test_a_keyring_keeps_the_primary_first():
    ring = keyring((3, MASTER_2), (1, MASTER_1))
    assert ring.primary == 3
    assert ring.keys == {3: MASTER_2, 1: MASTER_1}


def test_a_keyring_accepts_standard_or_url_safe_base64_with_or_without_padding_and_spaces():
    secret = bytes(range(200, 232))  # encodes with both "+/" and "-_" alphabets
    standard = base64.b64encode(secret).decode()
    url_safe = base64.urlsafe_b64encode(secret).decode()
    assert standard != url_safe
    for text in (standard, url_safe, url_safe.rstrip("="), f" {url_safe} "):
        assert Keyring.parse(f" 7 :{text}", "PREFS_INDEX_KEY").keys == {7: secret}


def test_the_largest_key_version_still_wraps():
    envelope = Envelope(keyring((0xFFFFFFFF, MASTER_1)))
    customer_id = uuid.uuid4()
    _, wrapped = envelope.new_data_key(customer_id)
    assert Envelope.master_version(wrapped) == 0xFFFFFFFF
    envelope.unwrap(customer_id, 1, wrapped)


# Blind indexes


def vault(master: bytes, index: bytes) -> Vault:
    return Vault.from_settings(f"1:{key_text(master)}", f"1:{key_text(index)}")


def test_card_digests_come_from_the_index_key_not_the_master_keys():
    card = "4929123456789012"
    assert vault(MASTER_1, INDEX_1).index.card(card) == vault(MASTER_2, INDEX_1).index.card(card)
    assert vault(MASTER_1, INDEX_1).index.card(card) != vault(MASTER_1, INDEX_2).index.card(card)


def test_a_card_digest_is_an_hmac_under_a_key_derived_from_the_index_key():
    card = "4929123456789012"
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"prefs.blind-index.v1", info=b"card"
    ).derive(INDEX_1)
    index = vault(MASTER_1, INDEX_1).index
    assert index.card(card) == hmac.new(derived, card.encode(), hashlib.sha256).digest()
    # neither the raw index key nor any master key is used directly
    assert index.card(card) != hmac.new(INDEX_1, card.encode(), hashlib.sha256).digest()
    assert index.card(card) != hmac.new(MASTER_1, card.encode(), hashlib.sha256).digest()


def test_blind_indexes_for_different_purposes_do_not_match():
    index = vault(MASTER_1, INDEX_1).index
    value = "4929123456789012"
    digests = {
        index.card(value),
        index.checkout_code(value),
        index.digest("subject", value.encode()),
        index.digest("pairwise", value.encode()),
        index.digest("ledger", value.encode()),
    }
    assert len(digests) == 5


def test_subject_digests_separate_issuer_and_subject():
    index = vault(MASTER_1, INDEX_1).index
    assert index.subject("https://id.example", "alice") != index.subject(
        "https://id.example/", "lice"
    )
    assert index.subject("https://id.example", "alice") != index.subject(
        "https://other.example", "alice"
    )


def test_during_an_index_key_rotation_lookups_try_every_version_primary_first():
    rotated = BlindIndex(
        Keyring.parse(f"2:{key_text(INDEX_2)},1:{key_text(INDEX_1)}", "PREFS_INDEX_KEY")
    )
    old = BlindIndex(Keyring.parse(f"1:{key_text(INDEX_1)}", "PREFS_INDEX_KEY"))
    new = BlindIndex(Keyring.parse(f"1:{key_text(INDEX_2)}", "PREFS_INDEX_KEY"))
    assert rotated.versions == [2, 1]
    assert rotated.all_digests("card", b"4929123456789012") == [
        new.card("4929123456789012"),
        old.card("4929123456789012"),
    ]


def test_pairwise_references_differ_per_partner_and_are_stable():
    index = vault(MASTER_1, INDEX_1).index
    customer, tailor, shop = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert index.pairwise(tailor, customer) == index.pairwise(tailor, customer)
    assert index.pairwise(tailor, customer) != index.pairwise(shop, customer)
    assert str(customer) not in index.pairwise(tailor, customer)
