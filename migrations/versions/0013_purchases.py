"""Purchases into the locker: where a preference came from, and checkout codes that let one
visit's purchases in.

preferences.source_ct holds, sealed under the customer's data key like every other personal
field, where the preference came from when a till added it ({kind: till, store, purchased_on});
NULL for preferences the customer typed. checkout_codes.keep_purchases lets the till that
uses the code record that visit's purchases once (the write clears it).

Both columns are new and nullable or defaulted, so the previous release runs on this schema;
but it does not know the `purchases` audience: a customer who grants it through the new release
gets errors from the old one's consent list (and its expiry job would name the grant wrongly in
the ledger). Finish the rollout before customers are offered the grant.

Revision ID: 0013
Revises: 0012
"""

from prefs.db import run_sql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    ALTER TABLE preferences ADD COLUMN source_ct bytea;
    ALTER TABLE checkout_codes ADD COLUMN keep_purchases boolean NOT NULL DEFAULT false;
    """)


def downgrade() -> None:
    # purchases consents go with the capability; their ledger records stay (append-only)
    run_sql("""
    DELETE FROM consents WHERE audience = 'purchases';
    ALTER TABLE checkout_codes DROP COLUMN keep_purchases;
    ALTER TABLE preferences DROP COLUMN source_ct;
    """)
