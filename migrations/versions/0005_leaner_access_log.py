"""A leaner access log for the till's hot path: one B-tree instead of three.

The primary key becomes (customer_id, at, disclosure_id), which is also the order the
customer's page reads (newest first, by a backward scan), so the separate "newest" index goes;
the retention purge's index on ``at`` becomes a BRIN index (rows arrive in time order). Every
lookup writes one access-log row: two fewer B-tree insertions per lookup, less WAL.

Revision ID: 0005
Revises: 0004
"""

from prefs.db import run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    ALTER TABLE access_log DROP CONSTRAINT access_log_pkey,
        ADD CONSTRAINT access_log_pkey PRIMARY KEY (customer_id, at, disclosure_id);
    DROP INDEX access_log_newest;
    DROP INDEX access_log_age;
    CREATE INDEX access_log_age ON access_log USING brin (at);
    """)


def downgrade() -> None:
    run_sql("""
    DROP INDEX access_log_age;
    CREATE INDEX access_log_age ON access_log (at);
    CREATE INDEX access_log_newest ON access_log (customer_id, at DESC, disclosure_id DESC);
    ALTER TABLE access_log DROP CONSTRAINT access_log_pkey,
        ADD CONSTRAINT access_log_pkey PRIMARY KEY (customer_id, disclosure_id);
    """)
