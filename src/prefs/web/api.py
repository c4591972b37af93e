"""HTTP for the web page and, in development only, the demo sign-in."""

from __future__ import annotations

from typing import Any

from prefs.settings import Settings


def route_handlers(settings: Settings) -> list[Any]:
    """The page's routes; development adds the demo sign-in."""
    return []
