"""The browser tests' pieces: Chromium, the served page, and what the page did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Service:
    """A running `prefs serve` and what it printed for the first minute."""

    url: str
    data_dir: Path
    log: Path
    till_key: str
    partner_key: str
    card: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Watch:
    """Everything a page asked for, and anything that went wrong in it."""

    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_clean(self, service: Service) -> None:
        elsewhere = [
            url
            for url in self.requests
            if not (url.startswith(service.url + "/") or url.startswith(("blob:", "data:")))
        ]
        assert not elsewhere, f"the page asked for something beyond the service: {elsewhere}"
        assert not self.errors, f"the page reported errors: {self.errors}"
