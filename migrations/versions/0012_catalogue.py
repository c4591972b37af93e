"""The retailer's catalogue: product facts, nothing personal, so kept in plaintext.

catalogue_products holds one row per SKU; `search` is the name, brand and category as
full-text words (the 'simple' configuration: product words are not English prose, and the
embedded server ships no pg_trgm). catalogue_state holds one counter, raised by every import
that changes something: readers that keep the statuses in memory (the till lookup) compare it
to know when to read them again.

Revision ID: 0012
Revises: 0011
"""

from prefs.db import run_sql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE catalogue_products (
        sku         text PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        brand       text CHECK (length(brand) BETWEEN 1 AND 100),
        category    text CHECK (length(category) BETWEEN 1 AND 100),
        status      text NOT NULL CHECK (status IN ('available', 'discontinued')),
        attributes  jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(attributes) = 'object'),
        replaced_by text,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        search      tsvector GENERATED ALWAYS AS (
            to_tsvector('simple', name || ' ' || coalesce(brand, '') || ' '
                                  || coalesce(category, ''))
        ) STORED
    );
    CREATE INDEX catalogue_products_search ON catalogue_products USING gin (search);
    CREATE INDEX catalogue_products_sku_prefix ON catalogue_products (lower(sku) text_pattern_ops);
    CREATE TABLE catalogue_state (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version bigint NOT NULL DEFAULT 1
    );
    INSERT INTO catalogue_state DEFAULT VALUES;
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE catalogue_state;
    DROP TABLE catalogue_products;
    """)
