"""The benchmark's peer: the till lookup written the way a typical team would write it.

    PREFS_DATA_DIR=... PREFS_DATABASE_URL=postgresql://... uv run uvicorn peer_app:create_app \
        --factory --app-dir loadtests --workers 2 --no-access-log --log-level warning

FastAPI + SQLAlchemy 2 async ORM (asyncpg driver) + pydantic, on prefs' database and schema and
with prefs' keys (read as prefs reads them), doing the work prefs does for POST /v1/pos/lookup:
the till's API key checked against ``credentials`` by its hash, the card's blind index (or the
checkout code's, bound to the first store that uses it), the live `pos` grant, the customer's
data key unwrapped and the granted fields of the granted preferences decrypted (prefs.crypto),
the catalogue's status laid over the stored one, the visit sealed into ``access_log`` as
prefs.disclosures seals it, committed before the answer. Same answer and same 404 as prefs.

Written as such a service usually is: an AsyncSession per request from a dependency, mapped
classes for the tables, one query per question, pydantic models for the request and the answer.
What it leaves out: the till's miss throttle (the benchmark sends no misses) and group commit.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from msgspec import msgpack
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from sqlalchemy import LargeBinary, Text, Uuid, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from prefs.crypto import DataKey, Vault, api_key_hash
from prefs.disclosures import Visit, seal
from prefs.settings import load

NOT_FOUND = "No customer preferences can be shown for this card or code."


# --- tables ---------------------------------------------------------------------------------------
class Base(DeclarativeBase):
    pass


class Credential(Base):
    __tablename__ = "credentials"

    credential_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str]
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    display_name: Mapped[str]
    store: Mapped[str | None]
    revoked_at: Mapped[datetime | None]


class CardIndex(Base):
    __tablename__ = "card_index"

    card_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    customer_id: Mapped[uuid.UUID]


class CheckoutCode(Base):
    __tablename__ = "checkout_codes"

    code_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    customer_id: Mapped[uuid.UUID]
    fields: Mapped[list[str]] = mapped_column(ARRAY(Text))
    preference_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(Uuid))
    store: Mapped[str | None]
    expires_at: Mapped[datetime]


class Consent(Base):
    __tablename__ = "consents"

    customer_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    audience: Mapped[str] = mapped_column(primary_key=True)
    fields: Mapped[list[str]] = mapped_column(ARRAY(Text))
    preference_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(Uuid))
    expires_at: Mapped[datetime | None]


class CustomerKey(Base):
    __tablename__ = "customer_keys"

    customer_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    generation: Mapped[int]
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)


class Preference(Base):
    __tablename__ = "preferences"

    customer_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    preference_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    rank: Mapped[int]
    status: Mapped[str]
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary)  # everything, one ciphertext
    product_ct: Mapped[bytes | None] = mapped_column(LargeBinary)  # rows not yet converted
    attributes_ct: Mapped[bytes | None] = mapped_column(LargeBinary)
    note_ct: Mapped[bytes | None] = mapped_column(LargeBinary)


class CatalogueProduct(Base):
    __tablename__ = "catalogue_products"

    sku: Mapped[str] = mapped_column(primary_key=True)
    status: Mapped[str]


class AccessLog(Base):
    __tablename__ = "access_log"

    customer_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(primary_key=True, server_default=func.now())
    disclosure_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)


# --- request and answer ---------------------------------------------------------------------------
CARD_SEPARATORS = re.compile(r"[ \-]")
CARD_DIGITS = re.compile(r"[0-9]{6,24}")
CODE_SEPARATORS = re.compile(r"[\s\-]")
CODE = re.compile(r"[23456789ABCDEFGHJKMNPQRSTWXYZ]{8}")


class LookupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    card: str | None = Field(default=None, min_length=1, max_length=64)
    code: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def card_or_code(self) -> LookupRequest:
        if (self.card is None) == (self.code is None):
            raise ValueError("send exactly one of card or code")
        if self.card is not None:
            self.card = CARD_SEPARATORS.sub("", self.card)
            if not CARD_DIGITS.fullmatch(self.card):
                raise ValueError("card must be 6 to 24 ASCII digits")
        if self.code is not None:
            self.code = CODE_SEPARATORS.sub("", self.code).upper()
            if not CODE.fullmatch(self.code):
                raise ValueError("not a checkout code")
        return self


class Product(BaseModel):
    sku: str
    name: str
    brand: str | None = None
    category: str | None = None


Status = Literal["available", "discontinued"]


class TillPreference(BaseModel):
    rank: int
    status: Status
    product: Product | None = None
    attributes: dict[str, str] | None = None
    note: str | None = None


class LookupResult(BaseModel):
    via: Literal["card", "code"]
    fields: list[str]
    preferences: list[TillPreference]
    disclosure_id: uuid.UUID


attributes_json = TypeAdapter(dict[str, str])
note_json = TypeAdapter(str)


class NotFound(Exception):
    """Nothing to show for this card or code: unknown, no live grant, expired, another store's."""


# --- dependencies ---------------------------------------------------------------------------------
async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


def get_vault(request: Request) -> Vault:
    vault: Vault = request.app.state.vault
    return vault


Session = Annotated[AsyncSession, Depends(get_session)]
Keys = Annotated[Vault, Depends(get_vault)]
bearer = HTTPBearer(auto_error=False)


async def till_credential(
    session: Session, authorization: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Credential:
    """The live till key the request carries, or 401."""
    if authorization is None:
        raise HTTPException(401, "A till API key is required.")
    credential = await session.scalar(
        select(Credential).where(
            Credential.key_hash == api_key_hash(authorization.credentials),
            Credential.kind == "pos",
            Credential.revoked_at.is_(None),
        )
    )
    if credential is None:
        raise HTTPException(401, "The API key is not valid.")
    return credential


Till = Annotated[Credential, Depends(till_credential)]


# --- the lookup -----------------------------------------------------------------------------------
async def find_by_card(
    session: AsyncSession, vault: Vault, card: str
) -> tuple[uuid.UUID, list[str], list[uuid.UUID] | None]:
    """The customer behind a card and their live `pos` grant (fields, preference ids)."""
    hashes = vault.index.all_digests("card", card.encode())  # primary index key first
    found = (await session.scalars(select(CardIndex).where(CardIndex.card_hash.in_(hashes)))).all()
    if not found:
        raise NotFound
    customer_id = min(found, key=lambda entry: hashes.index(entry.card_hash)).customer_id
    grant = await session.scalar(
        select(Consent).where(
            Consent.customer_id == customer_id,
            Consent.audience == "pos",
            or_(Consent.expires_at.is_(None), Consent.expires_at > func.now()),
        )
    )
    if grant is None:
        raise NotFound
    return customer_id, grant.fields, grant.preference_ids


async def find_by_code(
    session: AsyncSession, vault: Vault, code: str, till: Credential
) -> tuple[uuid.UUID, list[str], list[uuid.UUID] | None]:
    """The customer behind a live checkout code, which is bound to the first store using it."""
    hashes = vault.index.all_digests("checkout-code", code.encode())
    found = (
        await session.scalars(
            select(CheckoutCode)
            .where(CheckoutCode.code_hash.in_(hashes), CheckoutCode.expires_at > func.now())
            .with_for_update()
        )
    ).all()
    if not found:
        raise NotFound
    checkout_code = min(found, key=lambda entry: hashes.index(entry.code_hash))
    if checkout_code.store is None:
        checkout_code.store = till.store
    elif checkout_code.store != till.store:
        raise NotFound
    return checkout_code.customer_id, checkout_code.fields, checkout_code.preference_ids


def decrypt(key: DataKey, preference: Preference, column: str, blob: bytes) -> bytes:
    return key.decrypt(blob, "preferences", column, preference.preference_id)


class Content(BaseModel):
    """What a preference says: one ciphertext of [product, attributes, note, source] (msgpack,
    as prefs writes it), or for rows not yet converted one ciphertext per field."""

    product: Product
    attributes: dict[str, str]
    note: str | None = None


def content(key: DataKey, preference: Preference) -> Content:
    if preference.sealed is not None:
        product, attributes, note, _source = msgpack.decode(
            decrypt(key, preference, "sealed", preference.sealed)
        )
        return Content(product=product, attributes=attributes, note=note)
    assert preference.product_ct is not None and preference.attributes_ct is not None
    return Content(
        product=Product.model_validate_json(
            decrypt(key, preference, "product", preference.product_ct)
        ),
        attributes=attributes_json.validate_json(
            decrypt(key, preference, "attributes", preference.attributes_ct)
        ),
        note=None
        if preference.note_ct is None
        else note_json.validate_json(decrypt(key, preference, "note", preference.note_ct)),
    )


router = APIRouter()


@router.post("/v1/pos/lookup", response_model_exclude_unset=True)
async def lookup(body: LookupRequest, till: Till, session: Session, vault: Keys) -> LookupResult:
    """A customer's ranked preferences, with only the fields they granted, and the visit logged."""
    if body.card is not None:
        customer_id, fields, preference_ids = await find_by_card(session, vault, body.card)
    else:
        assert body.code is not None
        customer_id, fields, preference_ids = await find_by_code(session, vault, body.code, till)
    customer_key = await session.get(CustomerKey, customer_id)
    if customer_key is None:
        raise NotFound
    key = vault.envelope.unwrap(customer_id, customer_key.generation, customer_key.wrapped)

    query = select(Preference).where(Preference.customer_id == customer_id)
    if preference_ids is not None:
        query = query.where(Preference.preference_id.in_(preference_ids))
    preferences = (await session.scalars(query.order_by(Preference.rank))).all()
    contents = [content(key, p) for p in preferences]
    statuses = {}
    if contents:
        catalogue = await session.execute(
            select(CatalogueProduct.sku, CatalogueProduct.status).where(
                CatalogueProduct.sku.in_({c.product.sku for c in contents})
            )
        )
        statuses = {sku: status for sku, status in catalogue}

    shown = []
    for number, (preference, opened) in enumerate(zip(preferences, contents, strict=True), 1):
        shown_preference = TillPreference(
            rank=number, status=statuses.get(opened.product.sku, preference.status)
        )
        if "product" in fields:
            shown_preference.product = opened.product
        if "attributes" in fields:
            shown_preference.attributes = opened.attributes
        if "note" in fields:
            shown_preference.note = opened.note
        shown.append(shown_preference)

    disclosure_id = uuid.uuid4()
    visit = Visit(
        actor_kind="pos",
        credential_id=till.credential_id,
        actor_name=till.display_name,
        store=till.store,
        partner_id=None,
        purpose="checkout",
        via="card" if body.card is not None else "code",
        preference_ids=[p.preference_id for p in preferences],
        fields=list(fields),
    )
    session.add(
        AccessLog(
            customer_id=customer_id,
            disclosure_id=disclosure_id,
            sealed=seal(key, disclosure_id, visit),
        )
    )
    await session.commit()
    return LookupResult(
        via=visit.via, fields=list(fields), preferences=shown, disclosure_id=disclosure_id
    )


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def not_found(_: Request, __: Exception) -> JSONResponse:
    """prefs' 404, word for word."""
    return JSONResponse(
        {
            "type": "urn:prefs:problem:not-found",
            "title": "Not found",
            "status": 404,
            "detail": NOT_FOUND,
        },
        status_code=404,
        media_type="application/problem+json",
    )


def create_app(database_url: str | None = None, vault: Vault | None = None) -> FastAPI:
    """The peer, on prefs' database and keys (from the environment unless given)."""
    if database_url is None or vault is None:
        settings = load(os.environ)
        if settings.database_url is None:
            raise SystemExit("set PREFS_DATABASE_URL")
        database_url = database_url or settings.database_url
        vault = vault or Vault.from_settings(settings.master_keys, settings.index_keys)
    engine = create_async_engine(
        "postgresql+asyncpg://" + database_url.partition("://")[2], pool_size=16, max_overflow=0
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(title="peer till lookup", lifespan=lifespan)
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.state.engine = engine
    app.state.vault = vault
    app.add_exception_handler(NotFound, not_found)
    app.include_router(router)
    return app
