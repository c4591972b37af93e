"""The till's miss throttle, shared by every worker and host: misses per key and per store.

One row per till key (its hash) and one per store: the start of its current one-minute window
and the lookups in it that found nothing. The lookup statement reads these rows and the misses
are counted under row locks, so the limits hold across worker processes and hosts, not once
per process.

Revision ID: 0006
Revises: 0005
"""

from prefs.db import run_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE key_misses (
        key_hash     bytea PRIMARY KEY,
        window_start timestamptz NOT NULL,
        misses       integer NOT NULL CHECK (misses >= 0)
    );
    CREATE TABLE store_misses (
        store        text PRIMARY KEY,
        window_start timestamptz NOT NULL,
        misses       integer NOT NULL CHECK (misses >= 0)
    );
    """)


def downgrade() -> None:
    run_sql("DROP TABLE store_misses; DROP TABLE key_misses;")
