"""The SKU beside each preference as a keyed index, and the catalogue's status moves (expand).

A preference's SKU is sealed with the rest of it, so the database cannot find the preferences of
a SKU; anonymous demand, which counts the catalogue's status of what customers keep, must find
them when an import moves a SKU's status. ``preferences.sku_index`` holds the SKU's keyed
index: the index key's version (4 bytes) and the HMAC of the SKU under a key derived from
``PREFS_INDEX_KEY`` (a product without a SKU is indexed by its preference id, so it looks like
any other and matches none). Never a bare hash: without the index key, a SKU of the public
catalogue cannot be tried against it. ``sku_index_of`` is the nonce of the ``sealed``
ciphertext the index was made from: a row whose ``sealed`` was rewritten without it (by the
previous release during a rollout), or written before this revision, reads as not indexed, and
an import treats its customer as possibly keeping any SKU until the backfill (``prefs migrate``
runs it: it needs the keys) indexes it.

``catalogue_moves`` lists the SKUs whose status an import moved (or that it added), with the
catalogue version that moved them, until demand has recounted the customers keeping them: the
import's transaction records them, and the recount that follows deletes them, so an import
stopped in between is finished by the next one. The upgrade records every SKU of the catalogue
as moved: demand counted the stored status until now, and the imports before this revision
moved statuses (or added SKUs a customer had typed a status for) without recounting anybody, so
whoever keeps a SKU of the catalogue is recounted once, by the backfill `prefs migrate` runs
(or by the next import), as after an import that moved them all.

Adding nullable columns changes only the catalogue, so the table is locked for moments however
large it is; no index is added on ``sku_index`` (an import that moved statuses reads the table
once, as a backfill does, rather than every write keeping an index). The downgrade drops both:
the SKUs stay sealed in the preferences.

Revision ID: 0018
Revises: 0017
"""

from prefs.db import run_sql

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    ALTER TABLE preferences ADD COLUMN sku_index bytea, ADD COLUMN sku_index_of bytea;

    CREATE TABLE catalogue_moves (
        sku     text PRIMARY KEY,
        version bigint NOT NULL
    );
    INSERT INTO catalogue_moves (sku, version)
    SELECT p.sku, s.version FROM catalogue_products p CROSS JOIN catalogue_state s;
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE catalogue_moves;
    ALTER TABLE preferences DROP COLUMN sku_index, DROP COLUMN sku_index_of;
    """)
