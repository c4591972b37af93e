"""Partners customers can choose to share with (created with `prefs credentials create`)."""

from __future__ import annotations

import asyncpg

from prefs.partners.schemas import Partner

DIRECTORY = """
SELECT partner_id AS id, name, description FROM partners WHERE retired_at IS NULL
ORDER BY name, partner_id
"""


async def directory(conn: asyncpg.Connection) -> list[Partner]:
    return [Partner(**dict(row)) for row in await conn.fetch(DIRECTORY)]
