"""The operator's `prefs` command, run as they run it, against the session's database and keys."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

PREFS = Path(sys.executable).parent / "prefs"


async def prefs_command(database: Any, settings: Any, *args: str) -> tuple[int, str]:
    """Run `prefs ...` against the test database and keys; returns (exit code, output)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFS_")}
    env.update(
        PREFS_DATABASE_URL=database.url,
        PREFS_DATA_DIR=str(settings.data_dir),
        PREFS_LOG_LEVEL="WARNING",
    )
    process = await asyncio.create_subprocess_exec(
        str(PREFS), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, output.decode()
