"""Development only: a demo customer, a demo till key and a demo partner for the first minute."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from prefs.crypto import Vault
from prefs.settings import Settings


@dataclass(frozen=True)
class Demo:
    subject: str
    till_key: str | None
    partner_key: str | None
    card: str | None


async def ensure_demo(conn: asyncpg.Connection, vault: Vault, settings: Settings) -> Demo | None:
    """Create the demo data once (keys kept under the data dir); None outside development."""
    return None
