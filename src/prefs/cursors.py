"""Page cursors: opaque tokens the service seals, so a client can neither read nor forge one.

A cursor holds a position (a number and an id) sealed with AES-GCM under a key derived from
the index keyring; its associated data names the list and whose list it is, so a cursor of
another list, another customer or another partner is refused like a forged one. Clients see
neither timestamps nor how many changes a partner's or a store's feed has had.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from datetime import UTC, datetime, timedelta

from prefs.crypto import DecryptionError, ServiceCipher
from prefs.errors import CursorRetired, InvalidInput

_POSITION = struct.Struct(">q16s")  # a signed 64-bit number and a UUID
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_LENGTH = 200  # the `after` query parameter's limit
FORGED = "after must be the `next` value of a previous page."


def _context(kind: str, owner: uuid.UUID) -> bytes:
    return kind.encode() + b"\x00" + owner.bytes


def _sealed(cipher: ServiceCipher, kind: str, owner: uuid.UUID, position: bytes) -> str:
    blob = cipher.encrypt(position, _context(kind, owner))
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def _opened(cipher: ServiceCipher, kind: str, owner: uuid.UUID, cursor: str) -> bytes:
    """The position sealed in ``cursor``; InvalidInput (400) for anything the service did not
    seal for this list."""
    if len(cursor) > _MAX_LENGTH or not cursor.isascii():
        raise InvalidInput(FORGED)
    try:
        blob = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return cipher.decrypt(blob, _context(kind, owner))
    except (binascii.Error, ValueError, DecryptionError):
        raise InvalidInput(FORGED) from None


def seal(cipher: ServiceCipher, kind: str, owner: uuid.UUID, number: int, ident: uuid.UUID) -> str:
    """The cursor for the position (``number``, ``ident``) in ``owner``'s list ``kind``."""
    return _sealed(cipher, kind, owner, _POSITION.pack(number, ident.bytes))


def open_(cipher: ServiceCipher, kind: str, owner: uuid.UUID, cursor: str) -> tuple[int, uuid.UUID]:
    """The position a cursor holds, or InvalidInput (400) for anything the service did not seal
    for this list."""
    try:
        number, ident = _POSITION.unpack(_opened(cipher, kind, owner, cursor))
    except struct.error:
        raise InvalidInput(FORGED) from None
    return number, uuid.UUID(bytes=ident)


def seal_time(
    cipher: ServiceCipher, kind: str, owner: uuid.UUID, at: datetime, ident: uuid.UUID
) -> str:
    """A cursor for a position ordered by time (microseconds since 1970, UTC)."""
    return seal(cipher, kind, owner, (at - _EPOCH) // timedelta(microseconds=1), ident)


def open_time(
    cipher: ServiceCipher, kind: str, owner: uuid.UUID, cursor: str
) -> tuple[datetime, uuid.UUID]:
    """The time and id a time cursor holds; 400 when out of range (never a 500)."""
    micros, ident = open_(cipher, kind, owner, cursor)
    try:
        return _EPOCH + timedelta(microseconds=micros), ident
    except OverflowError:
        raise InvalidInput(FORGED) from None


def seal_text(cipher: ServiceCipher, kind: str, owner: uuid.UUID, text: str) -> str:
    """A cursor for a position named by text (an id that orders the list)."""
    return _sealed(cipher, kind, owner, text.encode())


def open_text(cipher: ServiceCipher, kind: str, owner: uuid.UUID, cursor: str) -> str:
    """The text a text cursor holds; 400 for anything the service did not seal for this list."""
    try:
        return _opened(cipher, kind, owner, cursor).decode()
    except UnicodeDecodeError:
        raise InvalidInput(FORGED) from None


_FEED_POSITION = struct.Struct(">q")
RETIRED = (
    "This cursor was handed out before the list's order changed and no longer names a place in "
    "it: read the list again from its start (without `after`); reorders already seen come again."
)


def seal_position(cipher: ServiceCipher, kind: str, owner: uuid.UUID, position: int) -> str:
    """A cursor for a feed ordered by its recipient's positions (prefs.feeds)."""
    return _sealed(cipher, kind, owner, _FEED_POSITION.pack(position))


def open_position(
    cipher: ServiceCipher, kind: str, owner: uuid.UUID, cursor: str | None, *, retired: str
) -> int:
    """The position a feed cursor holds (0, the feed's start, without one); 410 for a cursor
    sealed for this owner's list under its ``retired`` kind (a transaction id, before positions),
    400 for anything else the service did not seal for this owner's list."""
    if not cursor:
        return 0
    try:
        (position,) = _FEED_POSITION.unpack(_opened(cipher, kind, owner, cursor))
    except InvalidInput:
        try:
            _opened(cipher, retired, owner, cursor)
        except InvalidInput:
            raise InvalidInput(FORGED) from None
        raise CursorRetired(RETIRED) from None
    except struct.error:
        raise InvalidInput(FORGED) from None
    if position < 0:
        raise InvalidInput(FORGED)
    return int(position)
