"""Looking at a view as people do: at phone and desktop widths, screenshotted, scanned by axe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import axe_playwright_python

from tests.support.paths import repo_root

SCREENSHOTS = repo_root() / "artifacts" / "screenshots"
WIDTHS = {"phone": (360, 780), "desktop": (1280, 900)}
AXE_SOURCE = (Path(axe_playwright_python.__file__).parent / "axe.min.js").read_text()
BLOCKING = ("serious", "critical")


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (axe injected through the devtools protocol,
    so the page's own Content-Security-Policy stays in force)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE_SOURCE)
    result: dict[str, Any] = page.evaluate(
        "axe.run(document, {resultTypes: ['violations']}).then(r => JSON.parse(JSON.stringify(r)))"
    )
    return list(result["violations"])


def _describe(violations: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"  {v['impact']}: {v['id']} — {v['help']} — "
        + "; ".join(
            " ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"])
            for n in v["nodes"][:5]
        )
        for v in violations
    )


def look_at(page: Any, name: str) -> None:
    """Screenshot the view at each width and fail on any serious or critical axe-core finding."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    original = page.viewport_size
    found: dict[str, list[dict[str, Any]]] = {}
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(50)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
            f"{name} scrolls sideways at {width} px"
        )
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
        found[label] = axe_violations(page)
    page.set_viewport_size(original)
    blocking = {
        label: [v for v in violations if v["impact"] in BLOCKING]
        for label, violations in found.items()
    }
    problems = {label: v for label, v in blocking.items() if v}
    assert not problems, f"axe-core found serious or critical problems on {name}:\n" + "\n".join(
        f"{label}:\n{_describe(v)}" for label, v in problems.items()
    )
    minor = [v for violations in found.values() for v in violations if v["impact"] not in BLOCKING]
    if minor:
        print(f"axe-core notes on {name} (not blocking):\n{_describe(minor)}")
