"""Stores: the directory customers pick from, till keys that belong to it, and each store's queue
of reorders.

`stores` is the retailer's directory (nothing personal; a reference table on a cluster). Every
store a till key already names comes into it (named "Store <id>" until `prefs stores rename`),
and from now on a till key names a store of the directory (foreign key).

A reorder addressed to a store names it (`fulfiller` `store:<id>`, `store_id`). The store's tills
read their queue in the order of `queue_xid`: the id of the transaction that last changed the
reorder (created it, addressed it, moved it, or closed it on erasure), kept by a trigger so no writer can
forget it. The queue shows only changes older than every transaction still running
(pg_snapshot_xmin), as the partner feed does, so a change that commits late never lands behind
a cursor already handed out.

Reorders placed before this revision with a bare `store` fulfiller reached nobody: no store
system could see them. Where the directory holds exactly one store, a waiting one is addressed
to that store (the only store the customer can have meant) and enters its queue. With several
stores there is no honest guess: a waiting one is cancelled, keeps its bare `store` fulfiller,
and the page tells the customer it named no store and can be placed again from a store.

The previous release runs on this schema (the new columns are nullable, bare `store` stays
valid for rows it writes), but its reorders "from the store" go into the same void as before,
and a till key it creates for a store outside the directory is refused. Finish the rollout
before telling customers about store reorders.

Revision ID: 0014
Revises: 0013
"""

from prefs.db import run_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE stores (
        store_id    text PRIMARY KEY CHECK (length(store_id) BETWEEN 1 AND 64),
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        address     text CHECK (length(address) <= 300),
        created_at  timestamptz NOT NULL DEFAULT now(),
        closed_at   timestamptz
    );
    INSERT INTO stores (store_id, name)
    SELECT DISTINCT store, 'Store ' || store FROM credentials WHERE store IS NOT NULL;
    ALTER TABLE credentials
        ADD CONSTRAINT credentials_store FOREIGN KEY (store) REFERENCES stores (store_id);

    ALTER TABLE reorders
        ADD COLUMN store_id text REFERENCES stores (store_id),
        ADD COLUMN queue_xid xid8,
        DROP CONSTRAINT reorders_check,
        ADD CONSTRAINT reorders_fulfiller CHECK (
            (fulfiller = 'store' AND partner_id IS NULL AND store_id IS NULL)
            OR (store_id IS NOT NULL AND fulfiller = 'store:' || store_id AND partner_id IS NULL)
            OR (partner_id IS NOT NULL AND fulfiller = 'partner:' || partner_id::text
                AND store_id IS NULL)),
        DROP CONSTRAINT reorders_state_check,
        ADD CONSTRAINT reorders_state_check CHECK (state IN
            ('proposed', 'requested', 'accepted', 'ready', 'collected', 'fulfilled', 'declined',
             'cancelled'));
    CREATE INDEX reorders_store_queue ON reorders (store_id, queue_xid, reorder_id)
        WHERE store_id IS NOT NULL;

    CREATE FUNCTION reorders_queue_position() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.store_id IS NOT NULL AND (TG_OP = 'INSERT'
                OR OLD.store_id IS DISTINCT FROM NEW.store_id
                OR OLD.state IS DISTINCT FROM NEW.state
                OR OLD.snapshot_ct IS DISTINCT FROM NEW.snapshot_ct) THEN
            NEW.queue_xid := pg_current_xact_id();
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER reorders_queue_position BEFORE INSERT OR UPDATE ON reorders
        FOR EACH ROW EXECUTE FUNCTION reorders_queue_position();

    UPDATE reorders
    SET store_id = sole.store_id, fulfiller = 'store:' || sole.store_id, updated_at = now()
    FROM (SELECT min(store_id) AS store_id FROM stores HAVING count(*) = 1) sole
    WHERE reorders.fulfiller = 'store' AND reorders.state = 'requested';
    UPDATE reorders SET state = 'cancelled', updated_at = now()
    WHERE fulfiller = 'store' AND state = 'requested';
    """)


def downgrade() -> None:
    # store reorders become bare `store` ones again; ready and collected ones take the states the
    # previous release knows (accepted, fulfilled)
    run_sql("""
    DROP TRIGGER reorders_queue_position ON reorders;
    DROP FUNCTION reorders_queue_position();
    DROP INDEX reorders_store_queue;
    ALTER TABLE reorders DROP CONSTRAINT reorders_fulfiller, DROP CONSTRAINT reorders_state_check;
    UPDATE reorders SET state = 'accepted' WHERE state = 'ready';
    UPDATE reorders SET state = 'fulfilled' WHERE state = 'collected';
    UPDATE reorders SET fulfiller = 'store' WHERE store_id IS NOT NULL;
    ALTER TABLE reorders
        ADD CONSTRAINT reorders_state_check CHECK (state IN
            ('proposed', 'requested', 'accepted', 'fulfilled', 'declined', 'cancelled')),
        ADD CONSTRAINT reorders_check CHECK ((fulfiller = 'store') = (partner_id IS NULL)),
        DROP COLUMN queue_xid,
        DROP COLUMN store_id;
    ALTER TABLE credentials DROP CONSTRAINT credentials_store;
    DROP TABLE stores;
    """)
