"""Personal metadata sealed at rest (expand): the access log's visits.

``access_log.sealed`` holds what identifies a visit (who: kind, credential, name, store,
partner; purpose, via, preferences and fields), encrypted under the customer's data key with
associated data binding customer, table, column and row (the disclosure id). Only customer_id,
at and disclosure_id stay in clear: retention, ordering and distribution need them. New entries
are written sealed only; the plaintext columns become nullable and are emptied by the backfill
(``prefs migrate`` and ``prefs serve`` run it, with the keys; rows in clear are read until then).
A later revision drops them (contract) once every deployment has run the backfill.

The downgrade refuses while sealed entries exist: the previous revision cannot read them, and
decrypting them back into clear would undo the point. Delete them to roll back (losing them).

Revision ID: 0009
Revises: 0006
"""

from prefs.db import run_sql

revision = "0009"
down_revision = "0006"
branch_labels = None
depends_on = None

PLAINTEXT = (
    "actor_kind",
    "credential_id",
    "actor_name",
    "purpose",
    "via",
    "preference_ids",
    "fields",
)


def upgrade() -> None:
    run_sql(f"""
    ALTER TABLE access_log ADD COLUMN sealed bytea,
        {", ".join(f"ALTER COLUMN {column} DROP NOT NULL" for column in PLAINTEXT)},
        ADD CONSTRAINT access_log_sealed_or_clear
            CHECK (sealed IS NOT NULL OR actor_kind IS NOT NULL);
    -- what the backfill still has to seal (empty once it ran: new entries never enter it)
    CREATE INDEX access_log_in_clear ON access_log (customer_id) WHERE sealed IS NULL;
    """)


def downgrade() -> None:
    run_sql(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM access_log WHERE actor_kind IS NULL) THEN
            RAISE EXCEPTION 'access_log holds sealed entries the previous revision cannot read'
                USING HINT = 'DELETE FROM access_log WHERE actor_kind IS NULL to roll back';
        END IF;
    END $$;
    DROP INDEX access_log_in_clear;
    ALTER TABLE access_log DROP CONSTRAINT access_log_sealed_or_clear,
        {", ".join(f"ALTER COLUMN {column} SET NOT NULL" for column in PLAINTEXT)},
        DROP COLUMN sealed;
    """)
