"""HTTP for the web page (the customer's at /, store staff's at /store) and, in development only,
the demo sign-in."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


def content_security_policy(settings: Settings) -> str:
    """Nothing from elsewhere, except that the page talks to the identity provider it signs
    customers in with (its discovery document, token and end-session endpoints): that origin
    only."""
    connect = "'self'"
    if settings.oidc_issuer and settings.oidc_client_id:
        provider = urlsplit(settings.oidc_issuer)
        connect += f" {provider.scheme}://{provider.netloc}"
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    )


def security_headers(settings: Settings) -> dict[str, str]:
    """Sent with the page and every asset: no inline code, nothing from elsewhere, no framing,
    and no Referer (the hand-over token is in the fragment, which browsers never send, but be
    sure)."""
    return {
        "content-security-policy": content_security_policy(settings),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "cross-origin-opener-policy": "same-origin",
        "cross-origin-resource-policy": "same-origin",
        "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
        "x-frame-options": "DENY",
    }


def with_headers(added: dict[str, str]) -> Any:
    """ASGI middleware adding ``added`` to every response it wraps."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = MutableScopeHeaders.from_message(message)
                    for name, value in added.items():
                        headers[name] = value
                await send(message)

            await app(scope, receive, send_with_headers)

        return middleware

    return wrap


class DemoSession(msgspec.Struct, kw_only=True):
    token: str
    subject: str
    expires_in: int


def _page(settings: Settings) -> bytes:
    """The page, told how customers sign in: the demo sign-in (development), and the identity
    provider's issuer, the page's client id, scopes and redirect path (as data attributes)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    attributes = f'data-demo-sign-in="{"on" if settings.dev_issuer else "off"}"'
    if settings.oidc_issuer and settings.oidc_client_id:
        for name, value in (
            ("issuer", settings.oidc_issuer),
            ("client-id", settings.oidc_client_id),
            ("scopes", settings.oidc_scopes),
            ("redirect-path", settings.oidc_redirect_path),
        ):
            attributes += f' data-oidc-{name}="{escape(value, quote=True)}"'
    return html.replace('data-demo-sign-in="off"', attributes, 1).encode()


def route_handlers(settings: Settings) -> list[Any]:
    """The page's routes; development adds the demo sign-in."""
    page = _page(settings)
    security = with_headers(security_headers(settings))
    store_page = (STATIC / "store.html").read_bytes()

    # the identity provider sends customers back to the redirect path: the same page
    paths = {"/", settings.oidc_redirect_path} if settings.oidc_client_id else {"/"}

    @get(sorted(paths), include_in_schema=False, middleware=[security], sync_to_thread=False)
    def index() -> Response[bytes]:
        """The self-service page (its script and styles come from /static)."""
        return Response(page, media_type=MediaType.HTML, headers={"cache-control": "no-cache"})

    @get("/store", include_in_schema=False, middleware=[security], sync_to_thread=False)
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
        middleware=[security],
        resolve_symlinks=False,
    )
    handlers: list[Any] = [index, store, assets]
    if settings.dev_issuer:
        issuer = DevIssuer(settings.dev_issuer_key_path)

        @post(
            "/dev/demo-session",
            include_in_schema=False,
            status_code=HTTP_200_OK,
            middleware=[security],
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
