"""HTTP for the customer's preferences: /v1/me/preferences."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from prefs.auth import customer_guard
from prefs.crypto import Vault
from prefs.db import Connection
from prefs.errors import InvalidInput, PreconditionFailed, PreconditionRequired
from prefs.http import MERGE_PATCH, STRING_WHEN_SENT, declared_body
from prefs.preferences import service
from prefs.preferences.schemas import Preference, PreferenceCreate, PreferenceList, PreferenceUpdate
from prefs.problems import problems

IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match",
        required=True,
        pattern=r'^\s*(\*|(W/)?"?[0-9]{1,9}"?)\s*$',
        description='The preference\'s ETag, e.g. "3" (or *); 428 without it; a weak ETag '
        "never matches (412).",
        schema_extra=STRING_WHEN_SENT,
    ),
]


def expected_version(if_match: str | None) -> int | None:
    """The version an If-Match header asks for; None for ``*``."""
    if if_match is None:
        raise PreconditionRequired("Send If-Match with the version you last read (its ETag).")
    value = if_match.strip()
    if value == "*":
        return None
    if value.startswith("W/"):
        raise PreconditionFailed(
            "If-Match compares ETags strongly (RFC 9110), so a weak ETag (W/...) never matches: "
            'send the ETag as the service gave it, e.g. "3".'
        )
    value = value.strip('"')
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise InvalidInput('If-Match must be an ETag such as "3".')
    return int(value)


def _tagged(preference: Preference, status_code: int = 200) -> Response[Preference]:
    return Response(
        preference, status_code=status_code, headers={"ETag": f'"{preference.version}"'}
    )


class PreferencesController(Controller):
    path = "/v1/me/preferences"
    tags = ["preferences"]
    guards = [customer_guard]
    security = [{"customer": []}]

    @get("/", responses=problems(401, 404, 503))
    async def list_all(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
    ) -> PreferenceList:
        """Every preference, in the customer's own order (at most 500)."""
        items = await service.list_preferences(conn, vault, customer_id)
        return PreferenceList(items=items, count=len(items))

    @post(
        "/",
        status_code=HTTP_201_CREATED,
        operation_class=declared_body(PreferenceCreate),
        responses=problems(400, 401, 404, 409, 413, 415, 503),
    )
    async def create(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        data: JSONBody[PreferenceCreate],
    ) -> Response[Preference]:
        """Add a preference (at ``rank``, default last)."""
        preference = await service.create_preference(conn, vault, customer_id, data)
        return _tagged(preference, HTTP_201_CREATED)

    @get("/{preference_id:uuid}", responses=problems(400, 401, 404, 503))
    async def read(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        preference_id: FromPath[UUID],
    ) -> Response[Preference]:
        """One preference, with its version as ETag."""
        return _tagged(await service.get_preference(conn, vault, customer_id, preference_id))

    @patch(
        "/{preference_id:uuid}",
        # documented as merge-patch+json only: a second media type with the same inline schema
        # makes client generators build the body twice (application/json is still accepted)
        operation_class=declared_body(PreferenceUpdate, media_types=(MERGE_PATCH,)),
        responses=problems(400, 401, 404, 409, 412, 413, 415, 428, 503),
    )
    async def update(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        preference_id: FromPath[UUID],
        data: JSONBody[PreferenceUpdate],
        if_match: IfMatch = None,
    ) -> Response[Preference]:
        """Change the fields given, as a JSON Merge Patch (RFC 7396; sent as
        application/merge-patch+json or application/json, the same either way): nested
        `product` and `attributes` change member by member, null removes one. Needs If-Match
        (412 when stale, 428 when missing)."""
        version = expected_version(if_match)
        preference = await service.update_preference(
            conn, vault, customer_id, preference_id, data, version
        )
        return _tagged(preference)

    @delete("/{preference_id:uuid}", responses=problems(400, 401, 404, 412, 428, 503))
    async def remove(
        self,
        conn: NamedDependency[Connection],
        vault: NamedDependency[Vault],
        customer_id: NamedDependency[UUID],
        preference_id: FromPath[UUID],
        if_match: IfMatch = None,
    ) -> None:
        """Delete a preference; needs If-Match."""
        await service.delete_preference(
            conn, vault, customer_id, preference_id, expected_version(if_match)
        )
