"""The application factory: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from litestar import Litestar, Request, Router
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from prefs import credentials, db
from prefs.access_log.api import AccessLogController
from prefs.auth import Customer, TokenVerifier
from prefs.cards.api import CardsController
from prefs.catalogue.api import CatalogueController
from prefs.checkout.api import CheckoutCodesController
from prefs.consents.api import ConsentsController, ReceiptKeysController
from prefs.consents.service import terms as consent_terms
from prefs.crypto import Keyring, ReceiptSigner, Vault
from prefs.customers.api import MeController
from prefs.customers.service import require_customer_id
from prefs.health.api import HealthController, MetricsController
from prefs.http import InlineBodies, require_json_body
from prefs.insights.api import InsightsController
from prefs.keys import service as keys
from prefs.observability import (
    ObservabilityMiddleware,
    configure_logging,
    flush_metrics_periodically,
)
from prefs.partners.api import PartnerController, PartnersController
from prefs.pos.api import PosController
from prefs.pos.service import LOOKUP_SERVER_SETTINGS, LookupBatcher
from prefs.preferences.api import PreferencesController
from prefs.problems import exception_handlers
from prefs.purchases.api import PurchasesController
from prefs.ratelimit import customer_rate_limit
from prefs.reorders.api import CustomerReordersController
from prefs.retention import service as retention
from prefs.rights.api import RightsController
from prefs.settings import Settings, load
from prefs.stores.api import StoreQueueController, StoresController
from prefs.throttle import ThrottledTills
from prefs.web.api import route_handlers as web_routes


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.database_url is None:
            raise RuntimeError("no database URL: start the service with `prefs serve`")
        pooler = settings.database_pooler
        app.state.pool = await db.create_pool(
            settings.database_url, settings.pool_min_size, settings.pool_max_size, pooler=pooler
        )
        try:
            async with app.state.pool.acquire() as conn:
                await keys.refuse_a_retired_primary(conn, app.state.vault)
        except BaseException:
            await app.state.pool.close()
            raise
        app.state.lookup_pool = await db.create_pool(
            settings.database_url,
            1,
            settings.lookup_batches_in_flight,
            # behind a transaction pooler each batch sets them for its own transaction
            server_settings=None if pooler == "transaction" else LOOKUP_SERVER_SETTINGS,
            pooler=pooler,
        )
        app.state.lookup_batcher = LookupBatcher(
            app.state.lookup_pool,
            settings.lookup_batch_max,
            settings.lookup_batches_in_flight,
            settings.lookup_misses_per_minute_per_key,
            settings.lookup_misses_per_minute_per_store,
            vault=app.state.vault,
            routed=settings.database_layout == "distributed",
            settings_per_transaction=pooler == "transaction",
        )
        purger = asyncio.create_task(
            retention.run_periodically(
                app.state.pool,
                app.state.vault,
                consent_terms(settings),
                settings.access_log_retention_days,
                settings.purge_interval_seconds,
                settings.expiry_interval_seconds,
            )
        )
        flusher = asyncio.create_task(flush_metrics_periodically())
        gc.freeze()  # what startup built lives as long as the process: collections skip it
        try:
            yield
        finally:
            for task in (purger, flusher):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await app.state.lookup_batcher.close()
            await app.state.lookup_pool.close()
            await app.state.pool.close()

    return lifespan


# App-wide objects reach handlers one way: as named dependencies, read from app.state as they are
# (an injected `State` would copy the app's state on every request). Guards and middleware, which
# are not injected, read connection.app.state; so does the till lookup, to keep dependency
# resolution off the hot path (prefs.pos.api).
def provide_pool(request: Request[Any, Any, Any]) -> db.Pool:
    pool: db.Pool = request.app.state.pool
    return pool


async def provide_conn(request: Request[Any, Any, Any]) -> AsyncIterator[db.Connection]:
    async with request.app.state.pool.acquire() as conn:
        yield conn


def provide_vault(request: Request[Any, Any, Any]) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


def provide_receipt_signer(request: Request[Any, Any, Any]) -> ReceiptSigner:
    signer: ReceiptSigner = request.app.state.receipt_signer
    return signer


def provide_settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def provide_schema_head(request: Request[Any, Any, Any]) -> str:
    head: str = request.app.state.schema_head
    return head


def provide_signed_in_customer(request: Request[Any, Any, Any]) -> Customer:
    signed_in_customer: Customer = request.state.signed_in_customer
    return signed_in_customer


async def provide_customer_id(
    conn: NamedDependency[db.Connection], signed_in_customer: NamedDependency[Customer]
) -> UUID:
    return await require_customer_id(conn, signed_in_customer.subject_hashes)


def provide_credential(request: Request[Any, Any, Any]) -> credentials.Credential:
    """The live credential behind the request's API key (its guard checked it)."""
    credential: credentials.Credential = request.state.credential
    return credential


def create_app(settings: Settings | None = None) -> Litestar:
    """The prefs ASGI application."""
    settings = settings or load()
    if os.environ.get("PREFS_WORKER_LOGGING") == "1":
        configure_logging(settings.log)
    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    db.known_revisions()  # the migration scripts are read here, never in a readiness request
    state = State(
        {
            "settings": settings,
            "vault": vault,
            "receipt_signer": ReceiptSigner(
                Keyring.parse(settings.receipt_keys, "PREFS_RECEIPT_KEYS")
            ),
            "verifier": TokenVerifier(settings, vault.index),
            "schema_head": db.head_revision(),
            "throttled_tills": ThrottledTills(),
        }
    )
    return Litestar(
        route_handlers=[
            HealthController,
            MetricsController,
            ReceiptKeysController,
            Router(
                "/",  # the customer's own routes (/v1/me…): their rate limit, nobody else's
                route_handlers=[
                    MeController,
                    PreferencesController,
                    ConsentsController,
                    CheckoutCodesController,
                    AccessLogController,
                    CustomerReordersController,
                    RightsController,
                ],
                middleware=[customer_rate_limit(settings.customer_requests_per_minute).middleware],
            ),
            PosController,
            CardsController,
            PurchasesController,
            StoreQueueController,
            PartnersController,
            StoresController,
            PartnerController,
            InsightsController,
            CatalogueController,
            *web_routes(settings),
        ],
        dependencies={
            "pool": Provide(provide_pool, sync_to_thread=False),
            "conn": Provide(provide_conn),
            "vault": Provide(provide_vault, sync_to_thread=False),
            "receipt_signer": Provide(provide_receipt_signer, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
            "schema_head": Provide(provide_schema_head, sync_to_thread=False),
            "signed_in_customer": Provide(provide_signed_in_customer, sync_to_thread=False),
            "customer_id": Provide(provide_customer_id),
            "credential": Provide(provide_credential, sync_to_thread=False),
        },
        state=state,
        lifespan=[_lifespan(settings)],
        exception_handlers=exception_handlers(),
        middleware=[ObservabilityMiddleware()],
        plugins=[InlineBodies()],
        before_request=require_json_body,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="prefs",
            version="1.0.0",
            description="The customer's own preference locker.",
            components=Components(
                security_schemes={
                    "customer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
                    "api_key": SecurityScheme(
                        type="http", scheme="bearer", description="pos_, ptn_ or ins_ key"
                    ),
                }
            ),
        ),
        logging_config=None,
        debug=False,
    )
