"""One ciphertext per preference (expand): ``preferences.sealed``.

``sealed`` holds everything a preference says (product, attributes, note, where a till-added
one came from) as one AES-GCM ciphertext under the customer's data key, its associated data
binding customer, table, column and row (the preference id) as every field's does. A till
lookup answering five preferences opens five ciphertexts instead of fifteen or more.

New and changed rows are written sealed only, their per-field columns (``product_ct``,
``attributes_ct``, ``note_ct``, ``source_ct``) NULL; rows written before are read field by field
until the backfill converts them (``prefs migrate`` runs it, and ``prefs serve`` when it
migrated: it needs the keys, which a migration does not have), a batch at a time, each batch
its own short transaction. A later revision drops the per-field columns (contract) once every
deployment has run it. Purchase histories keep their own ciphertext (``purchases_ct``): a till
purchase rewrites it without touching the content.

Adding a nullable column and dropping NOT NULL change only the catalogue, so the table is locked
for moments however large it is. The check is added NOT VALID: every existing row satisfies it
(both columns were NOT NULL until now), so scanning the table under the migration's lock would
prove nothing; rows written from now on are checked.

The previous release cannot read sealed rows: while old and new processes serve side by side,
an old one fails on a preference a new one wrote or converted, so keep that overlap short (the
rows in the per-field format read everywhere). The downgrade refuses while sealed rows exist (decrypting them back into the
per-field format needs the keys); delete them to roll back (losing them).

Revision ID: 0016
Revises: 0014
"""

from prefs.db import run_sql

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    ALTER TABLE preferences ADD COLUMN sealed bytea,
        ALTER COLUMN product_ct DROP NOT NULL, ALTER COLUMN attributes_ct DROP NOT NULL,
        ADD CONSTRAINT preferences_sealed_or_per_field
            CHECK (sealed IS NOT NULL OR (product_ct IS NOT NULL AND attributes_ct IS NOT NULL))
            NOT VALID;
    """)


def downgrade() -> None:
    run_sql("""
    DO $$
    BEGIN
        IF EXISTS (SELECT FROM preferences WHERE sealed IS NOT NULL) THEN
            RAISE EXCEPTION 'preferences sealed as one ciphertext exist, which the previous '
                            'revision cannot read';
        END IF;
    END $$;
    ALTER TABLE preferences DROP CONSTRAINT preferences_sealed_or_per_field,
        ALTER COLUMN product_ct SET NOT NULL, ALTER COLUMN attributes_ct SET NOT NULL,
        DROP COLUMN sealed;
    """)
