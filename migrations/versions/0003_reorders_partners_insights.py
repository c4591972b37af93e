"""Reorders with encrypted snapshots, pairwise partner references, idempotency records and
pseudonymous, customer-id-free demand counts.

The partner feed orders reorders by the id of the transaction that created them and only
shows transactions older than every one still running (pg_snapshot_xmin), so a poller never
misses a reorder that commits late and never sees one twice.

Revision ID: 0003
Revises: 0002
"""

from prefs.db import run_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE reorders (
        customer_id    uuid NOT NULL,
        reorder_id     uuid NOT NULL,
        preference_id  uuid NOT NULL,
        fulfiller      text NOT NULL,
        partner_id     uuid,
        origin         text NOT NULL CHECK (origin IN ('customer', 'partner')),
        quantity       integer NOT NULL CHECK (quantity BETWEEN 1 AND 99),
        state          text NOT NULL
                       CHECK (state IN ('requested', 'accepted', 'fulfilled', 'declined', 'cancelled')),
        fields         text[] NOT NULL,
        snapshot_ct    bytea,
        feed_xid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
        created_at     timestamptz NOT NULL DEFAULT now(),
        updated_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (customer_id, reorder_id),
        CHECK ((fulfiller = 'store') = (partner_id IS NULL))
    );
    CREATE INDEX reorders_customer_newest ON reorders (customer_id, created_at DESC);
    CREATE INDEX reorders_partner_feed ON reorders (partner_id, feed_xid, reorder_id)
        WHERE partner_id IS NOT NULL;
    CREATE UNIQUE INDEX reorders_id ON reorders (reorder_id, customer_id);

    CREATE TABLE partner_refs (
        partner_id   uuid NOT NULL,
        ref          text NOT NULL,
        customer_id  uuid NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (partner_id, ref)
    );
    CREATE UNIQUE INDEX partner_refs_customer ON partner_refs (customer_id, partner_id);

    CREATE TABLE idempotency_keys (
        owner          text NOT NULL,
        key            text NOT NULL,
        request_hash   bytea NOT NULL,
        customer_id    uuid,
        status         integer,
        response_ct    bytea,
        created_at     timestamptz NOT NULL DEFAULT now(),
        expires_at     timestamptz NOT NULL,
        PRIMARY KEY (owner, key)
    );
    CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
    CREATE INDEX idempotency_keys_customer ON idempotency_keys (customer_id);

    CREATE TABLE demand_groups (
        group_hash  bytea PRIMARY KEY,
        label_ct    bytea NOT NULL
    );
    CREATE TABLE demand_contributions (
        pseudonym   bytea NOT NULL,
        group_hash  bytea NOT NULL REFERENCES demand_groups (group_hash),
        PRIMARY KEY (pseudonym, group_hash)
    );
    CREATE INDEX demand_contributions_group ON demand_contributions (group_hash);
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE demand_contributions;
    DROP TABLE demand_groups;
    DROP TABLE idempotency_keys;
    DROP TABLE partner_refs;
    DROP TABLE reorders;
    """)
