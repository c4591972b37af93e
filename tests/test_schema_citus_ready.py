"""The migrated schema stays ready to be distributed by customer_id (Citus).

A distributed table's primary key and every unique constraint must contain the distribution
column, and a foreign key between distributed tables must include it on both sides. Every table
with a customer_id column is either customer-owned (distributed by customer_id, checked here) or
one of the lookup tables below, each of which is found by something other than the customer.
A new table with a customer_id column that is in neither list fails the test.
"""

from __future__ import annotations

from tests.support.distribution import CUSTOMER_OWNED

# Tables that carry a customer_id but are looked up by another key, before the customer is
# known; in a cluster each is distributed by (or co-located on) that key instead.
LOOKUP_TABLES = {
    # found by the keyed hash of the identity provider's subject, to learn who is signing in
    "customer_subjects": "subject_hash",
    # found by the blind index of a loyalty card presented at the till
    "card_index": "card_hash",
    # found by the blind index of a card confirmed at the till: every customer who claimed it
    "card_claims": "card_hash",
    # found by the blind index of a checkout code shown at the till
    "checkout_codes": "code_hash",
    # found by (partner, pairwise reference): the partner names the customer only by the ref
    "partner_refs": "partner_id",
    # found by (recipient, position): a partner's feed or a store's queue (co-located with
    # feed_positions); it carries customer_id so each entry's reorder is read on its node
    "feed_entries": "recipient",
    # found by (owner, Idempotency-Key); the owner is a customer or a partner, and a partner's
    # key is claimed before the customer it names is resolved
    "idempotency_keys": "owner",
}
# Not listed because they have no customer_id at all: erasures (tombstones keyed by the
# subject hash), credentials and partners (operator reference data), feed_positions (a counter per
# partner and store, distributed by recipient with feed_entries), feed_numbering (the one-row
# numbering the counters start in, a reference table), demand_groups,
# demand_contributions, demand_releases and demand_release_groups (pseudonymous counts and
# their daily noisy releases), insights_reads (per API key), retired_master_keys,
# alembic_version.

TABLES_WITH_CUSTOMER_ID = """
SELECT c.table_name FROM information_schema.columns c
JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = current_schema() AND c.column_name = 'customer_id'
  AND t.table_type = 'BASE TABLE'
"""

COLUMNS = """
SELECT column_name, is_nullable FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1
"""

# Every unique index, which covers primary keys, UNIQUE constraints and bare unique indexes.
UNIQUE_INDEXES = """
SELECT i.relname AS index, x.indisprimary AS primary,
       array(SELECT a.attname FROM unnest(x.indkey) k JOIN pg_attribute a
             ON a.attrelid = x.indrelid AND a.attnum = k)::text[] AS columns,
       x.indexprs IS NOT NULL AS on_expressions
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
WHERE t.relname = $1 AND t.relnamespace = current_schema()::text::regnamespace AND x.indisunique
"""

FOREIGN_KEYS = """
SELECT con.conname AS name, t.relname AS referencing, ref.relname AS referenced,
       array(SELECT a.attname FROM unnest(con.conkey) k JOIN pg_attribute a
             ON a.attrelid = con.conrelid AND a.attnum = k)::text[] AS columns,
       array(SELECT a.attname FROM unnest(con.confkey) k JOIN pg_attribute a
             ON a.attrelid = con.confrelid AND a.attnum = k)::text[] AS referenced_columns
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_class ref ON ref.oid = con.confrelid
WHERE con.contype = 'f' AND (t.relname = $1 OR ref.relname = $1)
  AND t.relnamespace = current_schema()::text::regnamespace
"""

EXCLUSION_CONSTRAINTS = """
SELECT conname FROM pg_constraint con JOIN pg_class t ON t.oid = con.conrelid
WHERE con.contype = 'x' AND t.relname = $1 AND t.relnamespace = current_schema()::text::regnamespace
"""


async def test_every_table_with_a_customer_id_is_either_customer_owned_or_a_known_lookup_table(
    conn,
):
    with_customer_id = {row["table_name"] for row in await conn.fetch(TABLES_WITH_CUSTOMER_ID)}
    unclassified = with_customer_id - CUSTOMER_OWNED - LOOKUP_TABLES.keys()
    assert not unclassified, (
        f"tables with a customer_id in neither list: {sorted(unclassified)} — add each to "
        "CUSTOMER_OWNED (and key it by customer_id) or, with a reason, to LOOKUP_TABLES"
    )
    stale = (CUSTOMER_OWNED | LOOKUP_TABLES.keys()) - with_customer_id
    assert not stale, f"listed tables that no longer exist or lost customer_id: {sorted(stale)}"
    assert not CUSTOMER_OWNED & LOOKUP_TABLES.keys()


async def test_customer_owned_tables_have_customer_id_in_every_key_and_unique_constraint(conn):
    problems = []
    for table in sorted(CUSTOMER_OWNED):
        columns = {
            row["column_name"]: row["is_nullable"] for row in await conn.fetch(COLUMNS, table)
        }
        if columns.get("customer_id") != "NO":
            problems.append(f"{table}.customer_id must be NOT NULL (it is the distribution column)")
        unique = await conn.fetch(UNIQUE_INDEXES, table)
        if not any(index["primary"] for index in unique):
            problems.append(f"{table} has no primary key")
        for index in unique:
            kind = "primary key" if index["primary"] else "unique index"
            if index["on_expressions"]:
                problems.append(f"{table}: {kind} {index['index']} is on an expression")
            if "customer_id" not in index["columns"]:
                problems.append(
                    f"{table}: {kind} {index['index']} {index['columns']} lacks customer_id"
                )
        for constraint in await conn.fetch(EXCLUSION_CONSTRAINTS, table):
            problems.append(
                f"{table}: exclusion constraint {constraint['conname']} cannot be distributed"
            )
    assert not problems, "\n".join(problems)


async def test_foreign_keys_keep_each_customers_rows_on_one_node(conn):
    """Between customer-owned tables a foreign key names customer_id on both sides; a
    customer-owned table may also point at operator reference data (partners), but no
    lookup table may point into customer-owned rows or be pointed at by them."""
    problems = []
    for table in sorted(CUSTOMER_OWNED):
        for key in await conn.fetch(FOREIGN_KEYS, table):
            ends = {key["referencing"], key["referenced"]}
            described = (
                f"{key['name']}: {key['referencing']}{key['columns']} -> {key['referenced']}"
                f"{key['referenced_columns']}"
            )
            if ends & LOOKUP_TABLES.keys():
                problems.append(f"{described} ties a lookup table to customer-owned rows")
            elif ends <= CUSTOMER_OWNED and not (
                "customer_id" in key["columns"] and "customer_id" in key["referenced_columns"]
            ):
                problems.append(f"{described} must include customer_id on both sides")
    assert not problems, "\n".join(problems)


async def test_lookup_tables_are_keyed_by_what_they_are_looked_up_by(conn):
    for table, lookup_key in LOOKUP_TABLES.items():
        [primary] = [index for index in await conn.fetch(UNIQUE_INDEXES, table) if index["primary"]]
        assert primary["columns"][0] == lookup_key, (table, primary["columns"])
