"""Personal metadata sealed at rest (expand): the access log's visits, purchase histories and
Idempotency-Key values.

* ``access_log.sealed`` holds what identifies a visit (who: kind, credential, name, store,
  partner; purpose, via, preferences and fields), encrypted under the customer's data key with
  associated data binding customer, table, column and row (the disclosure id). Only
  customer_id, at and disclosure_id stay in clear: retention, ordering and distribution need them.
* ``preferences.purchases_ct`` holds ``purchases`` and ``last_purchased_on`` the same way.
* ``idempotency_keys.key`` holds a keyed hash of the client's key (BlindIndex, purpose
  "idempotency-key") under the index key version ``key_version``; NULL marks a key stored
  verbatim before this revision.

New rows are written sealed (hashed) only; the columns in clear become nullable and are emptied
by the backfill (``prefs migrate`` and ``prefs serve`` run it: it needs the keys, which a
migration does not have); rows in clear are read until then. A later revision drops them
(contract) once every deployment has run the backfill.

The downgrade refuses while sealed rows exist: the previous revision cannot read them, and
decrypting them back into clear would undo the point. Delete them to roll back (losing them).

Revision ID: 0009
Revises: 0008
"""

from prefs.db import run_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

VISIT = ("actor_kind", "credential_id", "actor_name", "purpose", "via", "preference_ids", "fields")


def upgrade() -> None:
    run_sql(f"""
    ALTER TABLE access_log ADD COLUMN sealed bytea,
        {", ".join(f"ALTER COLUMN {column} DROP NOT NULL" for column in VISIT)},
        ADD CONSTRAINT access_log_sealed_or_clear
            CHECK (sealed IS NOT NULL OR actor_kind IS NOT NULL);
    ALTER TABLE preferences ADD COLUMN purchases_ct bytea,
        ALTER COLUMN purchases DROP NOT NULL, ALTER COLUMN purchases DROP DEFAULT,
        ADD CONSTRAINT preferences_purchases_sealed_or_clear
            CHECK (purchases_ct IS NOT NULL OR purchases IS NOT NULL);
    ALTER TABLE idempotency_keys ADD COLUMN key_version integer;
    """)


def downgrade() -> None:
    run_sql(f"""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM access_log WHERE actor_kind IS NULL)
           OR EXISTS (SELECT FROM preferences WHERE purchases IS NULL) THEN
            RAISE EXCEPTION 'sealed access-log entries or purchase histories exist, which the '
                            'previous revision cannot read';
        END IF;
    END $$;
    DELETE FROM idempotency_keys WHERE key_version IS NOT NULL;  -- short-lived; unusable before
    ALTER TABLE idempotency_keys DROP COLUMN key_version;
    ALTER TABLE preferences DROP CONSTRAINT preferences_purchases_sealed_or_clear,
        ALTER COLUMN purchases SET DEFAULT 0, ALTER COLUMN purchases SET NOT NULL,
        DROP COLUMN purchases_ct;
    ALTER TABLE access_log DROP CONSTRAINT access_log_sealed_or_clear,
        {", ".join(f"ALTER COLUMN {column} SET NOT NULL" for column in VISIT)},
        DROP COLUMN sealed;
    """)
