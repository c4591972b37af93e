"""Discontinued demand released once a day, with noise: the releases and each key's reads.

A release is drawn once per UTC day (the first reader of the day draws it, holding the day's
row, so two readers never draw two noises for one day) and served all day. Its groups point at
demand_groups and go with them: when a group's label is shredded, it leaves the release too.
insights_reads counts each insights key's reads per day for its daily limit.

Revision ID: 0011
Revises: 0010
"""

from prefs.db import run_sql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE demand_releases (
        released_on         date PRIMARY KEY,
        made_at             timestamptz NOT NULL DEFAULT now(),
        epsilon             double precision NOT NULL CHECK (epsilon > 0),
        k                   integer NOT NULL CHECK (k >= 2),
        groups_per_customer integer NOT NULL CHECK (groups_per_customer >= 1)
    );
    CREATE TABLE demand_release_groups (
        released_on date NOT NULL REFERENCES demand_releases (released_on) ON DELETE CASCADE,
        group_hash  bytea NOT NULL REFERENCES demand_groups (group_hash) ON DELETE CASCADE,
        customers   integer NOT NULL,
        PRIMARY KEY (released_on, group_hash)
    );
    CREATE INDEX demand_release_groups_group ON demand_release_groups (group_hash);
    CREATE TABLE insights_reads (
        credential_id uuid NOT NULL REFERENCES credentials (credential_id) ON DELETE CASCADE,
        read_on       date NOT NULL,
        reads         integer NOT NULL CHECK (reads >= 1),
        PRIMARY KEY (credential_id, read_on)
    );
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE insights_reads;
    DROP TABLE demand_release_groups;
    DROP TABLE demand_releases;
    """)
