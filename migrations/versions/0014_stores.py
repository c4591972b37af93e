"""Stores: the directory customers pick from, till keys that belong to it, and each store's queue
of reorders.

`stores` is the retailer's directory (nothing personal; a reference table on a cluster). Every
store a till key already names comes into it, named "Store <id>" until `prefs stores rename`;
a store whose every till key was revoked comes in closed (a store long gone). A store id the
previous release took but the directory's rule refuses (empty, longer than 64 characters, or
other than letters, digits, '.', '_' and '-') gets a new id, `legacy-<12 hex digits>`, on its
till keys too, and keeps the old text in its name. From now on a till key names a store of the
directory (foreign key).

A reorder addressed to a store names it (`fulfiller` `store:<id>`, `store_id`). The store's tills
read their queue in the order of `queue_xid`: the id of the transaction that last changed the
reorder (created it, addressed it, moved it on, cancelled it), kept by a trigger so that no
writer can forget it. The queue shows only changes older than every transaction still running
(pg_snapshot_xmin), as the partner feed does, so a change that commits late never lands behind
a cursor already handed out. A second trigger keeps the store's work from vanishing: deleting a
store reorder that is still requested, accepted or ready leaves it cancelled, without its
snapshot, so the store's queue shows it end (an erasure by the previous release deletes such
rows; this release cancels them itself).

Reorders placed before this revision with a bare `store` fulfiller reached nobody: no store
system could see them. Where the directory holds exactly one open store, a waiting (or
accepted) one is addressed to that store, the only one the customer can have meant, and enters
its queue. Otherwise there is no honest guess: it is cancelled, keeps its bare `store`
fulfiller, and the page tells the customer it named no store and can be placed again.

The previous release runs on this schema (the new columns are nullable, bare `store` stays
valid for rows it writes). A reorder "from the store" it places during the rollout meets the
rule above too, by a trigger: it reaches the only open store, or it is cancelled at once (its
answer says so), instead of waiting for a store that never sees it. A till key it creates for a
store outside the directory is refused.

Downgrading forgets which store each reorder names, and the directory: store reorders become
bare `store` ones (ready as accepted, collected as fulfilled), and upgrading again applies the
rule above to them. Keep `prefs stores list` first.

Revision ID: 0014
Revises: 0013
"""

from prefs.db import run_sql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

STORE_ID = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # prefs.text.STORE_ID_TEXT


def upgrade() -> None:
    run_sql(f"""
    CREATE TABLE stores (
        store_id    text PRIMARY KEY CHECK (length(store_id) BETWEEN 1 AND 64),
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        address     text CHECK (length(address) <= 300),
        created_at  timestamptz NOT NULL DEFAULT now(),
        closed_at   timestamptz
    );
    WITH named AS (
        SELECT store,
               CASE WHEN store ~ '{STORE_ID}' THEN store
                    ELSE 'legacy-' || left(md5(store), 12) END AS store_id,
               bool_or(revoked_at IS NULL) AS live,
               max(revoked_at) AS last_revoked
        FROM credentials WHERE store IS NOT NULL GROUP BY store
    )
    INSERT INTO stores (store_id, name, closed_at)
    SELECT store_id,
           left('Store ' || coalesce(nullif(regexp_replace(store, '[[:cntrl:]]', '', 'g'), ''),
                                     '(no name)'), 100),
           CASE WHEN live THEN NULL ELSE last_revoked END
    FROM named
    ON CONFLICT (store_id) DO NOTHING;
    UPDATE credentials SET store = 'legacy-' || left(md5(store), 12)
    WHERE store IS NOT NULL AND store !~ '{STORE_ID}';
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
                OR OLD.state IS DISTINCT FROM NEW.state) THEN
            NEW.queue_xid := pg_current_xact_id();
        END IF;
        RETURN NEW;
    END
    $$;
    CREATE TRIGGER reorders_queue_position BEFORE INSERT OR UPDATE ON reorders
        FOR EACH ROW EXECUTE FUNCTION reorders_queue_position();

    CREATE FUNCTION reorders_keep_store_work() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO reorders (customer_id, reorder_id, preference_id, fulfiller, store_id,
                              origin, quantity, state, fields, snapshot_ct, feed_xid,
                              created_at, updated_at, accepted_at)
        VALUES (OLD.customer_id, OLD.reorder_id, OLD.preference_id, OLD.fulfiller, OLD.store_id,
                OLD.origin, OLD.quantity, 'cancelled', OLD.fields, NULL, OLD.feed_xid,
                OLD.created_at, now(), OLD.accepted_at);
        RETURN OLD;
    END
    $$;
    CREATE TRIGGER reorders_keep_store_work AFTER DELETE ON reorders
        FOR EACH ROW
        WHEN (OLD.store_id IS NOT NULL AND OLD.state IN ('requested', 'accepted', 'ready'))
        EXECUTE FUNCTION reorders_keep_store_work();

    CREATE FUNCTION reorders_address_bare_store() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        sole text;
    BEGIN
        SELECT min(store_id) INTO sole FROM stores WHERE closed_at IS NULL HAVING count(*) = 1;
        IF sole IS NULL THEN
            NEW.state := 'cancelled';
        ELSE
            NEW.store_id := sole;
            NEW.fulfiller := 'store:' || sole;
        END IF;
        RETURN NEW;
    END
    $$;
    -- only the previous release writes a bare `store` (this one's API refuses it)
    CREATE TRIGGER reorders_address_bare_store BEFORE INSERT ON reorders
        FOR EACH ROW WHEN (NEW.fulfiller = 'store' AND NEW.state IN ('requested', 'accepted'))
        EXECUTE FUNCTION reorders_address_bare_store();

    UPDATE reorders
    SET store_id = sole.store_id, fulfiller = 'store:' || sole.store_id, updated_at = now()
    FROM (SELECT min(store_id) AS store_id FROM stores WHERE closed_at IS NULL
          HAVING count(*) = 1) sole
    WHERE reorders.fulfiller = 'store' AND reorders.state IN ('requested', 'accepted');
    UPDATE reorders SET state = 'cancelled', updated_at = now()
    WHERE fulfiller = 'store' AND state IN ('requested', 'accepted');
    """)


def downgrade() -> None:
    run_sql("""
    DROP TRIGGER reorders_address_bare_store ON reorders;
    DROP FUNCTION reorders_address_bare_store();
    DROP TRIGGER reorders_keep_store_work ON reorders;
    DROP FUNCTION reorders_keep_store_work();
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
