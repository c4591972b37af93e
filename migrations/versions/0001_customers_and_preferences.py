"""Customers, their wrapped data keys, blind indexes and encrypted preferences.

Every customer-owned table carries customer_id first in its primary key and in every unique
constraint, so each can be distributed by customer_id (Citus). The two lookup tables
(customer_subjects, card_index) are keyed by their blind index: that is how they are found.

Revision ID: 0001
Revises:
"""

from prefs.db import run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE customers (
        customer_id  uuid PRIMARY KEY,
        card_ct      bytea,
        created_at   timestamptz NOT NULL DEFAULT now(),
        updated_at   timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE customer_keys (
        customer_id     uuid PRIMARY KEY,
        generation      integer NOT NULL,
        master_version  integer NOT NULL,
        wrapped         bytea NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        rewrapped_at    timestamptz
    );
    CREATE INDEX customer_keys_master_version ON customer_keys (master_version);

    CREATE TABLE customer_subjects (
        subject_hash   bytea PRIMARY KEY,
        index_version  integer NOT NULL,
        customer_id    uuid NOT NULL
    );
    CREATE INDEX customer_subjects_customer ON customer_subjects (customer_id);

    CREATE TABLE card_index (
        card_hash      bytea PRIMARY KEY,
        index_version  integer NOT NULL,
        customer_id    uuid NOT NULL
    );
    CREATE INDEX card_index_customer ON card_index (customer_id);

    CREATE TABLE preferences (
        customer_id        uuid NOT NULL,
        preference_id      uuid NOT NULL,
        rank               integer NOT NULL CHECK (rank >= 1),
        status             text NOT NULL CHECK (status IN ('available', 'discontinued')),
        purchases          integer NOT NULL DEFAULT 0 CHECK (purchases >= 0),
        last_purchased_on  date,
        version            integer NOT NULL DEFAULT 1,
        product_ct         bytea NOT NULL,
        attributes_ct      bytea NOT NULL,
        note_ct            bytea,
        created_at         timestamptz NOT NULL DEFAULT now(),
        updated_at         timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (customer_id, preference_id),
        CONSTRAINT preferences_rank_unique UNIQUE (customer_id, rank) DEFERRABLE INITIALLY DEFERRED
    );
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE preferences;
    DROP TABLE card_index;
    DROP TABLE customer_subjects;
    DROP TABLE customer_keys;
    DROP TABLE customers;
    """)
