"""A real OpenID Connect provider for the sign-in tests: panva's oidc-provider on the machine's
Node, started on 127.0.0.1 (tests/oidc; `.ci/run` installs it with `npm ci`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.support.paths import repo_root
from tests.support.servers import free_port

PROVIDER_DIR = repo_root() / "tests" / "oidc"
CLIENT_ID = "prefs-page"
AUDIENCE = "urn:prefs:api"
START_SECONDS = 30


def missing() -> str | None:
    """Why the provider cannot run here (the tests skip, saying so), or None."""
    if shutil.which("node") is None:
        return "node is not installed: the sign-in tests need Node.js for their identity provider"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return f"oidc-provider is not installed: run `npm ci --prefix {PROVIDER_DIR}` (CI does)"
    return None


@contextmanager
def identity_provider(redirect: str, access_ttl: int = 300) -> Iterator[str]:
    """The provider's issuer URL, its only client `prefs-page` sending customers back to
    ``redirect``; stopped at the end."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "REDIRECT": redirect, "AUDIENCE": AUDIENCE}
    env["ACCESS_TTL"] = str(access_ttl)
    process = subprocess.Popen(
        ["node", "provider.mjs"],
        cwd=PROVIDER_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"the identity provider exited:\n{output}")
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the identity provider did not start"
            time.sleep(0.1)
        yield issuer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
