"""The customer's side of their checkout codes (expand): ``customer_checkout_codes``.

A checkout code is found at the till by its hash, so on a cluster ``checkout_codes`` lives on
the shard of its ``code_hash`` (docs/scale-out.md), and a statement that names a customer's codes
by ``customer_id`` would ask every shard. ``customer_checkout_codes`` lists each code under its
customer (``customer_id``, ``code_id``, ``code_hash``), on the customer's shard: ending one code,
or all of them when the customer stops sharing with tills, reads the hashes there and then
names the codes by hash.

The list follows ``checkout_codes`` by triggers, whoever writes (this release, or the previous
one during a rollout, which does not know the list): a code inserted is listed, a code deleted
(ended, used up by a purge, erased) is unlisted; a code's hash, id and customer never change.
Codes made before this revision are listed here. On a cluster the triggers' work moves into the
statements that write codes, as the feed's triggers' does (docs/scale-out.md).

The downgrade drops the list and its triggers; the codes themselves stay as they are.

Revision ID: 0017
Revises: 0016
"""

from prefs.db import run_sql

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE customer_checkout_codes (
        customer_id uuid NOT NULL,
        code_id     uuid NOT NULL,
        code_hash   bytea NOT NULL,
        PRIMARY KEY (customer_id, code_id)
    );

    CREATE FUNCTION checkout_codes_listed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO customer_checkout_codes (customer_id, code_id, code_hash)
        VALUES (NEW.customer_id, NEW.code_id, NEW.code_hash);
        RETURN NULL;
    END $$;
    CREATE TRIGGER checkout_codes_listed AFTER INSERT ON checkout_codes
        FOR EACH ROW EXECUTE FUNCTION checkout_codes_listed();

    CREATE FUNCTION checkout_codes_unlisted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM customer_checkout_codes
        WHERE customer_id = OLD.customer_id AND code_id = OLD.code_id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER checkout_codes_unlisted AFTER DELETE ON checkout_codes
        FOR EACH ROW EXECUTE FUNCTION checkout_codes_unlisted();

    INSERT INTO customer_checkout_codes (customer_id, code_id, code_hash)
    SELECT customer_id, code_id, code_hash FROM checkout_codes;
    """)


def downgrade() -> None:
    run_sql("""
    DROP TRIGGER checkout_codes_unlisted ON checkout_codes;
    DROP FUNCTION checkout_codes_unlisted();
    DROP TRIGGER checkout_codes_listed ON checkout_codes;
    DROP FUNCTION checkout_codes_listed();
    DROP TABLE customer_checkout_codes;
    """)
