"""The embedded PostgreSQL that `prefs serve` runs: sized for the till's working set, restarted
only on the start that changes a setting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from prefs import db


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def shared_buffers(url: str) -> str:
    async def show() -> str:
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            value: str = await conn.fetchval("SHOW shared_buffers")
            return value
        finally:
            await conn.close()

    return asyncio.run(show())


def test_the_embedded_server_takes_its_settings_and_restarts_only_to_change_them(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pgdata = tmp_path_factory.mktemp("sized") / "pg"
    first = db.EmbeddedPostgres(pgdata, {"shared_buffers": "144MB"})
    url = first.start()
    try:
        assert shared_buffers(url) == "144MB"
        running = postmaster_pid(pgdata)

        again = db.EmbeddedPostgres(pgdata, {"shared_buffers": "144MB"}).start()

        assert shared_buffers(again) == "144MB"
        assert postmaster_pid(pgdata) == running  # nothing to change: no restart
    finally:
        first.stop()


def test_prefs_serve_gives_its_server_a_quarter_of_the_memory_within_bounds() -> None:
    size = db.embedded_settings()["shared_buffers"]

    assert size.endswith("MB")
    assert 128 <= int(size.removesuffix("MB")) <= 2048
