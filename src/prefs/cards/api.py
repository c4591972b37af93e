"""HTTP for the till's card desk: POST /v1/pos/cards/confirm."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.status_codes import HTTP_204_NO_CONTENT

from prefs.auth import api_key_guard
from prefs.cards import service
from prefs.cards.schemas import CardConfirmation
from prefs.credentials import Credential
from prefs.crypto import Vault, api_key_hash
from prefs.db import Connection
from prefs.http import declared_body
from prefs.identifiers import CARD_NUMBER, CHECKOUT_CODE, normalise_card, normalise_code
from prefs.problems import problems
from prefs.settings import Settings

CARD_AND_CODE = {"properties": {"card": CARD_NUMBER, "code": CHECKOUT_CODE}}


class CardsController(Controller):
    path = "/v1/pos/cards"
    tags = ["till"]
    guards = [api_key_guard("pos")]
    security = [{"api_key": []}]

    @post(
        "/confirm",
        status_code=HTTP_204_NO_CONTENT,
        operation_class=declared_body(CardConfirmation, refine=CARD_AND_CODE),
        responses=problems(400, 401, 404, 413, 415, 429, 503),
    )
    async def confirm(
        self,
        request: Request[Any, Any, Any],
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        credential: NamedDependency[Credential],
        settings: NamedDependency[Settings],
        data: JSONBody[CardConfirmation],
    ) -> None:
        """Prove a card: the till scans it while its holder shows a checkout code. From then on
        the card finds this customer (and nobody else) at every till.

        Anything that does not match answers the same 404 and counts as a lookup miss.
        """
        assert credential.store is not None  # every till key belongs to a store
        await service.confirm(
            conn,
            vault.index,
            api_key_hash(request.state.api_key.secret),
            credential.store,
            normalise_card(data.card),
            normalise_code(data.code),
            settings.lookup_misses_per_minute_per_key,
            settings.lookup_misses_per_minute_per_store,
        )
