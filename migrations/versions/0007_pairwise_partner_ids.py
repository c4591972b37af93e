"""Pairwise preference ids for partners, proposals that wait for the customer, and a bounded
life for what an accepted reorder shows its partner.

``partner_preference_refs`` gives each (customer, partner, preference) a random id that only
that partner is shown: stable for it, meaningless to anyone else. It goes with the preference
(foreign key, cascading) and with the customer on erasure. Each partner reorder keeps the id
its partner knows the preference by (``preference_ref``), so the feed needs no join and a
reorder of a since deleted preference keeps an id nobody else holds. A partner's reorder starts
``proposed`` and waits for the customer's confirmation; ``accepted_at`` bounds how long an
accepted reorder's item stays readable for its partner.

Revision ID: 0007
Revises: 0006
"""

from prefs.db import run_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql("""
    CREATE TABLE partner_preference_refs (
        customer_id    uuid NOT NULL,
        partner_id     uuid NOT NULL,
        preference_id  uuid NOT NULL,
        ref            uuid NOT NULL DEFAULT gen_random_uuid(),
        created_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (customer_id, partner_id, preference_id),
        UNIQUE (customer_id, partner_id, ref),
        FOREIGN KEY (customer_id, preference_id)
            REFERENCES preferences (customer_id, preference_id) ON DELETE CASCADE
    );
    INSERT INTO partner_preference_refs (customer_id, partner_id, preference_id)
    SELECT DISTINCT r.customer_id, r.partner_id, r.preference_id
    FROM reorders r JOIN preferences p USING (customer_id, preference_id)
    WHERE r.partner_id IS NOT NULL;

    ALTER TABLE reorders ADD COLUMN preference_ref uuid, ADD COLUMN accepted_at timestamptz;
    UPDATE reorders r SET preference_ref = m.ref
    FROM partner_preference_refs m
    WHERE m.customer_id = r.customer_id AND m.partner_id = r.partner_id
      AND m.preference_id = r.preference_id;
    UPDATE reorders SET preference_ref = gen_random_uuid()
    WHERE partner_id IS NOT NULL AND preference_ref IS NULL;
    UPDATE reorders SET accepted_at = updated_at WHERE state = 'accepted';
    ALTER TABLE reorders
        ADD CONSTRAINT reorders_partner_preference_ref
            CHECK ((partner_id IS NULL) = (preference_ref IS NULL)),
        DROP CONSTRAINT reorders_state_check,
        ADD CONSTRAINT reorders_state_check CHECK (state IN
            ('proposed', 'requested', 'accepted', 'fulfilled', 'declined', 'cancelled'));
    """)


def downgrade() -> None:
    run_sql("""
    UPDATE reorders SET state = 'cancelled', updated_at = now() WHERE state = 'proposed';
    ALTER TABLE reorders
        DROP CONSTRAINT reorders_state_check,
        ADD CONSTRAINT reorders_state_check CHECK (state IN
            ('requested', 'accepted', 'fulfilled', 'declined', 'cancelled')),
        DROP CONSTRAINT reorders_partner_preference_ref,
        DROP COLUMN accepted_at,
        DROP COLUMN preference_ref;
    DROP TABLE partner_preference_refs;
    """)
