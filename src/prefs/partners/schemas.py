"""The partner directory."""

from uuid import UUID

import msgspec


class Partner(msgspec.Struct):
    id: UUID
    name: str
    description: str | None


class PartnerDirectory(msgspec.Struct):
    items: list[Partner]
