"""Browser tests: `prefs serve` in a subprocess on its own embedded PostgreSQL, Debian's Chromium.

The service runs exactly as a newcomer starts it (development mode, a fresh PREFS_DATA_DIR, a free
port on 127.0.0.1); Playwright drives /usr/bin/chromium (no browser download).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, Service, Watch
from tests.support.servers import free_port

START_SECONDS = 120
EXPECT_SECONDS = 15


def _printed(pattern: str, output: str) -> str:
    found = re.search(pattern, output)
    if found is None:
        raise AssertionError(f"`prefs serve` did not print {pattern!r}:\n{output}")
    return found.group(1)


@contextmanager
def prefs_serve(data_dir: Path, port: int, **extra_env: str) -> Iterator[Service]:
    """`prefs serve` on ``data_dir`` (embedded PostgreSQL) and ``port``, with ``extra_env`` on top
    of a development environment; stopped with Ctrl-C at the end."""
    log = data_dir / "serve.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PREFS_")}
    env.update(PREFS_DATA_DIR=str(data_dir), PREFS_ENV="development", **extra_env)
    prefs = Path(sys.executable).with_name("prefs")
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(prefs), "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"`prefs serve` exited with {process.returncode}:\n{log.read_text()}"
                )
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"`prefs serve` was not ready in {START_SECONDS} s:\n{log.read_text()}"
                )
            time.sleep(0.25)
        output = log.read_text()
        yield Service(
            url=url,
            data_dir=data_dir,
            log=log,
            till_key=_printed(r"demo till key: (pos_\S+)", output),
            partner_key=_printed(r"demo partner key: (ptn_\S+)", output),
            card=_printed(r'"card": "([0-9]+)"', output),
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                _stop_leftover_postgres(data_dir)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`prefs serve` on a fresh data dir, as a newcomer starts it."""
    with prefs_serve(tmp_path_factory.mktemp("prefs-web"), free_port()) as served:
        yield served


def _stop_leftover_postgres(data_dir: Path) -> None:
    """If `prefs serve` had to be killed, stop the embedded PostgreSQL it left (fast shutdown)."""
    try:
        pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):
        return


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's Chromium under Playwright, headless.

    Module-scoped: Playwright's sync API holds an event loop while it runs, which would stand in
    the way of the asyncio tests that follow.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (CI does)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=EXPECT_SECONDS * 1000)  # generous: CI machines have two cores
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@pytest.fixture
def browser_page(chromium: Any, service: Service) -> Iterator[tuple[Any, Watch]]:
    """A fresh browser context and page (desktop width), with every request and error recorded."""
    context = chromium.new_context(
        viewport={"width": 1280, "height": 900},
        accept_downloads=True,
        locale="en-GB",
        timezone_id="Europe/London",
    )
    context.add_init_script(CSP_WATCH)
    watch = Watch()
    context.on("request", lambda request: watch.requests.append(request.url))
    page = context.new_page()
    page.set_default_timeout(EXPECT_SECONDS * 1000)
    page.on("pageerror", lambda error: watch.errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            watch.errors.append(f"console: {message.text}")
            if message.type == "error" and "Failed to load resource" not in message.text
            else None
        ),
    )
    yield page, watch
    violations = page.evaluate("window.__cspViolations || []") if not page.is_closed() else []
    context.close()
    assert not violations, f"Content-Security-Policy violations: {violations}"
