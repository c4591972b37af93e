"""Consents and their hash-chained ledger, checkout codes, API credentials, partners, access log.

Customer-owned tables lead with customer_id in the primary key (Citus distribution column);
credentials and partners are operator reference data; checkout_codes is a lookup table keyed by
its blind index, like card_index.

Revision ID: 0002
Revises: 0001
"""

from prefs.db import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE partners (
        partner_id   uuid PRIMARY KEY,
        name         text NOT NULL,
        description  text,
        created_at   timestamptz NOT NULL DEFAULT now(),
        retired_at   timestamptz
    );

    CREATE TABLE credentials (
        credential_id  uuid PRIMARY KEY,
        kind           text NOT NULL CHECK (kind IN ('pos', 'partner', 'insights')),
        key_hash       bytea NOT NULL UNIQUE,
        display_name   text NOT NULL,
        store          text,
        partner_id     uuid REFERENCES partners (partner_id),
        created_at     timestamptz NOT NULL DEFAULT now(),
        revoked_at     timestamptz,
        CHECK ((kind = 'pos') = (store IS NOT NULL)),
        CHECK ((kind = 'partner') = (partner_id IS NOT NULL))
    );

    ALTER TABLE customers
        ADD COLUMN ledger_seq  bigint NOT NULL DEFAULT 0,
        ADD COLUMN ledger_head bytea;

    CREATE TABLE consents (
        customer_id     uuid NOT NULL,
        audience        text NOT NULL,
        fields          text[] NOT NULL,
        preference_ids  uuid[],
        expires_at      timestamptz,
        receipt_id      uuid NOT NULL,
        granted_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (customer_id, audience)
    );
    CREATE INDEX consents_expiry ON consents (expires_at) WHERE expires_at IS NOT NULL;

    CREATE TABLE consent_ledger (
        customer_id  uuid NOT NULL,
        seq          bigint NOT NULL,
        receipt_id   uuid NOT NULL,
        recorded_at  timestamptz NOT NULL,
        audience     text NOT NULL,
        state        text NOT NULL,
        receipt      jsonb NOT NULL,
        mac_version  integer NOT NULL,
        prev_hash    bytea NOT NULL,
        hash         bytea NOT NULL,
        PRIMARY KEY (customer_id, seq)
    );

    -- Append-only: records are never updated, and deleted only by an erasure of the whole
    -- customer (the erasing transaction sets prefs.erasure = 'on').
    CREATE FUNCTION consent_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND current_setting('prefs.erasure', true) = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'consent_ledger is append-only' USING ERRCODE = 'insufficient_privilege';
    END $$;
    CREATE TRIGGER consent_ledger_append_only BEFORE UPDATE OR DELETE ON consent_ledger
        FOR EACH ROW EXECUTE FUNCTION consent_ledger_append_only();

    CREATE TABLE checkout_codes (
        code_hash       bytea PRIMARY KEY,
        index_version   integer NOT NULL,
        customer_id     uuid NOT NULL,
        fields          text[] NOT NULL,
        preference_ids  uuid[],
        created_at      timestamptz NOT NULL DEFAULT now(),
        expires_at      timestamptz NOT NULL
    );
    CREATE INDEX checkout_codes_customer ON checkout_codes (customer_id);
    CREATE INDEX checkout_codes_expiry ON checkout_codes (expires_at);

    CREATE TABLE access_log (
        customer_id     uuid NOT NULL,
        disclosure_id   uuid NOT NULL DEFAULT gen_random_uuid(),
        at              timestamptz NOT NULL DEFAULT now(),
        actor_kind      text NOT NULL,
        credential_id   uuid NOT NULL,
        actor_name      text NOT NULL,
        store           text,
        partner_id      uuid,
        purpose         text NOT NULL,
        via             text NOT NULL,
        preference_ids  uuid[] NOT NULL,
        fields          text[] NOT NULL,
        PRIMARY KEY (customer_id, disclosure_id)
    );
    CREATE INDEX access_log_newest ON access_log (customer_id, at DESC, disclosure_id DESC);
    CREATE INDEX access_log_age ON access_log (at);
    """)


def downgrade() -> None:
    run_sql("""
    DROP TABLE access_log;
    DROP TABLE checkout_codes;
    DROP TABLE consent_ledger;
    DROP FUNCTION consent_ledger_append_only();
    DROP TABLE consents;
    ALTER TABLE customers DROP COLUMN ledger_seq, DROP COLUMN ledger_head;
    DROP TABLE credentials;
    DROP TABLE partners;
    """)
