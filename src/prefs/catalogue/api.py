"""HTTP for the catalogue: GET /v1/catalogue/products and /v1/catalogue/products/{sku}.

Reads carry the catalogue's version as their ETag: a client that sends it back in
If-None-Match gets 304 until an import changes a product.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, QueryParameter
from litestar.status_codes import HTTP_304_NOT_MODIFIED

from prefs.auth import customer_till_or_partner_guard
from prefs.catalogue import service
from prefs.catalogue.schemas import CatalogueProduct, ProductPage
from prefs.db import Connection
from prefs.http import STRING_WHEN_SENT, After, Limit
from prefs.problems import problems
from prefs.text import Sku

CACHE_CONTROL = "private, max-age=60"  # product facts change by import, rarely within a minute
Query = Annotated[
    str,
    QueryParameter(
        max_length=100,
        description="A SKU prefix or words of the name, brand or category (each word matches "
        "the start of a word: `chino` finds Classic Chinos); empty: every product",
    ),
]
IfNoneMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-None-Match",
        max_length=200,
        description="The ETag of an earlier read: 304 while the catalogue is unchanged",
        schema_extra=STRING_WHEN_SENT,
    ),
]


def _etag(version: int) -> str:
    return f'"catalogue-{version}"'


def _unchanged(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def _answer(body: Any, etag: str, if_none_match: str | None) -> Response[Any]:
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _unchanged(if_none_match, etag):
        return Response(None, status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(body, headers=headers)


class CatalogueController(Controller):
    path = "/v1/catalogue"
    tags = ["catalogue"]
    guards = [customer_till_or_partner_guard]
    security = [{"customer": []}, {"api_key": []}]

    @get("/products", responses=problems(400, 401, 503))
    async def search(
        self,
        conn: NamedDependency[Connection],
        q: Query = "",
        after: After = None,
        limit: Limit = 20,
        if_none_match: IfNoneMatch = None,
    ) -> Response[ProductPage]:
        """Products by SKU prefix or name words, in name order, a page at a time."""
        etag = _etag(await service.version(conn))
        if _unchanged(if_none_match, etag):
            return _answer(None, etag, if_none_match)
        items, following = await service.search(conn, q, after, limit)
        return _answer(ProductPage(items=items, next=following), etag, if_none_match)

    @get("/products/{sku:str}", responses=problems(400, 401, 404, 503))
    async def product(
        self,
        conn: NamedDependency[Connection],
        sku: FromPath[Sku],
        if_none_match: IfNoneMatch = None,
    ) -> Response[CatalogueProduct]:
        """One product of the catalogue."""
        etag = _etag(await service.version(conn))
        if _unchanged(if_none_match, etag):
            return _answer(None, etag, if_none_match)
        return _answer(await service.get(conn, sku), etag, if_none_match)
