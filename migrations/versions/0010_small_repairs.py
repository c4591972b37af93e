"""A retired master-key version wraps nothing new: the database refuses a data key or a demand
label written under a version recorded in retired_master_keys, whichever process writes it
(a worker of a rolling deploy still configured with the old primary, a mistaken rollback).

Revision ID: 0010
Revises: 0009
"""

from prefs.db import run_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE FUNCTION refuse_retired_master_key(version integer) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM retired_master_keys r WHERE r.version = $1) THEN
            RAISE EXCEPTION 'master key version % is retired: nothing new is wrapped under it', $1
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      CONSTRAINT = 'retired_master_key';
        END IF;
    END $$;

    CREATE FUNCTION customer_keys_not_retired() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM refuse_retired_master_key(NEW.master_version);
        RETURN NEW;
    END $$;
    CREATE TRIGGER customer_keys_not_retired
        BEFORE INSERT OR UPDATE OF wrapped, master_version ON customer_keys
        FOR EACH ROW EXECUTE FUNCTION customer_keys_not_retired();

    -- a label's header: a format byte, then the master key version in four bytes, big-endian
    CREATE FUNCTION demand_labels_not_retired() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM refuse_retired_master_key(
            ('x' || encode(substring(NEW.label_ct FROM 2 FOR 4), 'hex'))::bit(32)::integer);
        RETURN NEW;
    END $$;
    CREATE TRIGGER demand_labels_not_retired
        BEFORE INSERT OR UPDATE OF label_ct ON demand_groups
        FOR EACH ROW EXECUTE FUNCTION demand_labels_not_retired();
    """)


def downgrade() -> None:
    run_sql("""
    DROP TRIGGER demand_labels_not_retired ON demand_groups;
    DROP FUNCTION demand_labels_not_retired();
    DROP TRIGGER customer_keys_not_retired ON customer_keys;
    DROP FUNCTION customer_keys_not_retired();
    DROP FUNCTION refuse_retired_master_key(integer);
    """)
