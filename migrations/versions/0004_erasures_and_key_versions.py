"""Erasure tombstones (no personal data: a keyed hash of the subject and a time) and the
record of retired master-key versions.

Revision ID: 0004
Revises: 0003
"""

from prefs.db import run_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE erasures (
        subject_hash   bytea NOT NULL,
        index_version  integer NOT NULL,
        erased_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (subject_hash, erased_at)
    );

    CREATE TABLE retired_master_keys (
        version     integer PRIMARY KEY,
        retired_at  timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE retired_master_keys;
    DROP TABLE erasures;
    """)
