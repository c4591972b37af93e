"""Proven loyalty cards and checkout codes a customer can end.

A card a customer adds is only claimed (card_claims, by its blind index; several customers may
claim one card) until it is confirmed at a till, where the customer shows a checkout code while
the card is scanned; only then is it in card_index, which the till's lookup searches. Cards
enrolled before this revision stay in card_index as they are: they keep working at the till,
and a customer holding a card someone else registered takes it over by confirming it.

Card changes are counted per customer in hourly windows (card_changes, card_window_start).
Checkout codes gain an id (to end one early) and the store that first used one (bound to it).

Revision ID: 0008
Revises: 0007
"""

from prefs.db import run_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE card_claims (
        card_hash      bytea NOT NULL,
        customer_id    uuid NOT NULL,
        index_version  integer NOT NULL,
        created_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (card_hash, customer_id)
    );
    CREATE INDEX card_claims_customer ON card_claims (customer_id);

    ALTER TABLE customers
        ADD COLUMN card_changes integer NOT NULL DEFAULT 0 CHECK (card_changes >= 0),
        ADD COLUMN card_window_start timestamptz,
        ADD COLUMN card_proven_at timestamptz;

    ALTER TABLE checkout_codes
        ADD COLUMN code_id uuid NOT NULL DEFAULT gen_random_uuid(),
        ADD COLUMN store text;
    """)


def downgrade() -> None:
    # Cards never confirmed were never proven: they leave with their claims.
    run_sql("""
    UPDATE customers c SET card_ct = NULL, updated_at = now()
    WHERE c.card_ct IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM card_index i WHERE i.customer_id = c.customer_id);
    DROP TABLE card_claims;
    ALTER TABLE customers DROP COLUMN card_proven_at, DROP COLUMN card_window_start,
        DROP COLUMN card_changes;
    ALTER TABLE checkout_codes DROP COLUMN store, DROP COLUMN code_id;
    """)
