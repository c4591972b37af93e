"""HTTP for the customer's own profile: /v1/me (erasing it: prefs.rights.api)."""

from __future__ import annotations

from uuid import UUID

from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from prefs.auth import Customer, customer_guard
from prefs.crypto import Vault
from prefs.customers import service
from prefs.customers.schemas import Enrolment, Profile, ProfileUpdate
from prefs.db import Connection
from prefs.http import declared_body
from prefs.identifiers import CARD_NUMBER
from prefs.problems import problems

CARD = {"properties": {"card": {"anyOf": [CARD_NUMBER, {"type": "null"}]}}}


class MeController(Controller):
    path = "/v1/me"
    tags = ["customer"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @post(
        "/",
        operation_class=declared_body(Enrolment | None, required=False, refine=CARD),
        responses={
            200: ResponseSpec(Profile, description="Already enrolled"),
            **problems(400, 401, 413, 415, 429, 503),
        },
    )
    async def enrol(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        signed_in_customer: NamedDependency[Customer],
        data: JSONBody[Enrolment | None] = None,
    ) -> Response[Profile]:
        """Enrol the signed-in customer (201), or return the existing enrolment (200)."""
        card = data.card if data is not None else None
        profile, created = await service.enrol(conn, vault, signed_in_customer.subject_hashes, card)
        return Response(profile, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/", responses=problems(401, 404, 503))
    async def read(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
    ) -> Profile:
        """The customer's profile, with the loyalty card decrypted."""
        return await service.profile(conn, vault, customer_id)

    @patch(
        "/",
        operation_class=declared_body(ProfileUpdate, refine=CARD),
        responses=problems(400, 401, 404, 413, 415, 429, 503),
    )
    async def update(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        data: JSONBody[ProfileUpdate],
    ) -> Profile:
        """Set the loyalty card (pending until confirmed at a till) or clear it."""
        return await service.set_card(conn, vault, customer_id, data.card)
