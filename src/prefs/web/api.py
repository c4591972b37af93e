"""HTTP for the web page (the customer's at /, store staff's at /store) and, in development only,
the demo sign-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from litestar import MediaType, Response, get, post
from litestar.datastructures import MutableScopeHeaders
from litestar.di import NamedDependency
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_200_OK
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from prefs.auth import DevIssuer
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.settings import Settings
from prefs.web.demo import DEMO_SUBJECT, ensure_demo

STATIC = Path(__file__).parent / "static"
DEMO_TOKEN_SECONDS = 3600

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Sent with the page and every asset: no inline code, nothing from elsewhere, no framing, and no
# Referer (the hand-over token is in the fragment, which browsers never send, but be sure).
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
    "x-frame-options": "DENY",
}


def security_headers(app: ASGIApp) -> ASGIApp:
    """ASGI middleware adding the page's security headers to every response it wraps."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await app(scope, receive, send_with_headers)

    return middleware


class DemoSession(msgspec.Struct, kw_only=True):
    token: str
    subject: str
    expires_in: int


def _page(demo_sign_in: bool) -> bytes:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    if demo_sign_in:
        html = html.replace('data-demo-sign-in="off"', 'data-demo-sign-in="on"', 1)
    return html.encode()


def route_handlers(settings: Settings) -> list[Any]:
    """The page's routes; development adds the demo sign-in."""
    page = _page(settings.dev_issuer)
    store_page = (STATIC / "store.html").read_bytes()

    @get("/", include_in_schema=False, middleware=[security_headers], sync_to_thread=False)
    def index() -> Response[bytes]:
        """The self-service page (its script and styles come from /static)."""
        return Response(page, media_type=MediaType.HTML, headers={"cache-control": "no-cache"})

    @get("/store", include_in_schema=False, middleware=[security_headers], sync_to_thread=False)
    def store() -> Response[bytes]:
        """Store staff's page: their store's queue of reorders, signed in with a till key."""
        return Response(
            store_page, media_type=MediaType.HTML, headers={"cache-control": "no-cache"}
        )

    assets = create_static_files_router(
        path="/static",
        directories=[STATIC],
        name="web-static",
        include_in_schema=False,
        middleware=[security_headers],
        resolve_symlinks=False,
    )
    handlers: list[Any] = [index, store, assets]
    if settings.dev_issuer:
        issuer = DevIssuer(settings.dev_issuer_key_path)

        @post(
            "/dev/demo-session",
            include_in_schema=False,
            status_code=HTTP_200_OK,
            middleware=[security_headers],
        )
        async def demo_session(
            conn: NamedDependency[Connection],
            vault: NamedDependency[Vault],
            settings: NamedDependency[Settings],
        ) -> Response[DemoSession]:
            """Development only: a token for the demo customer (re-created if it was erased)."""
            await ensure_demo(conn, vault, settings)
            token = issuer.mint(DEMO_SUBJECT, DEMO_TOKEN_SECONDS)
            return Response(
                DemoSession(token=token, subject=DEMO_SUBJECT, expires_in=DEMO_TOKEN_SECONDS),
                headers={"cache-control": "no-store"},
            )

        handlers.append(demo_session)
    return handlers
