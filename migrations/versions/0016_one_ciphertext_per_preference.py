"""One ciphertext per preference (expand): ``preferences.sealed``.

``sealed`` holds everything a preference says (product, attributes, note, where a till-added
one came from) as one AES-GCM ciphertext under the customer's data key, its associated data
binding customer, table, column and row (the preference id) as every field's does. A till
lookup answering five preferences opens five ciphertexts instead of fifteen or more; every
reader of this release reads ``sealed`` where a row has it.

This is the expand half (docs/migrations.md): while the previous release may still serve, it
reads the per-field columns (``product_ct``, ``attributes_ct``, ``note_ct``, ``source_ct``), so
this release writes them too, beside ``sealed``, on every insert and update (a product without a
SKU, new in this release, is copied with the placeholder SKU ``-``, which this release reads
back as none). When the previous release rewrites a preference's fields it does not know
``sealed``: the trigger ``preferences_sealed_follows_fields`` empties it then, and readers fall
back to the fields until the backfill seals the row again. The backfill (``prefs migrate`` runs
it, and ``prefs serve`` when it migrated: it needs the keys, which a migration does not have)
seals rows written before, a batch at a time, each batch its own short transaction. The
contract half, a later revision once no previous-release process is left, stops writing the
per-field columns and drops them.

Adding a nullable column changes only the catalogue, so the table is locked for moments however
large it is. The downgrade drops the column and the trigger: every row still has its fields, so
nothing is lost.

Revision ID: 0016
Revises: 0015
"""

from prefs.db import run_sql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    ALTER TABLE preferences ADD COLUMN sealed bytea;

    CREATE FUNCTION preferences_sealed_follows_fields() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        -- A writer that changed the fields but left sealed as it was is the previous release:
        -- what it sealed is stale now, so readers must read the fields until the backfill.
        IF NEW.sealed IS NOT DISTINCT FROM OLD.sealed THEN
            NEW.sealed := NULL;
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER preferences_sealed_follows_fields
        BEFORE UPDATE OF product_ct, attributes_ct, note_ct, source_ct ON preferences
        FOR EACH ROW
        WHEN (NEW.product_ct IS DISTINCT FROM OLD.product_ct
              OR NEW.attributes_ct IS DISTINCT FROM OLD.attributes_ct
              OR NEW.note_ct IS DISTINCT FROM OLD.note_ct
              OR NEW.source_ct IS DISTINCT FROM OLD.source_ct)
        EXECUTE FUNCTION preferences_sealed_follows_fields();
    """)


def downgrade() -> None:
    run_sql("""
    DROP TRIGGER preferences_sealed_follows_fields ON preferences;
    DROP FUNCTION preferences_sealed_follows_fields();
    ALTER TABLE preferences DROP COLUMN sealed;
    """)
