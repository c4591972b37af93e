"""Seed a realistic data set fast, with the server's own keys, for load tests and the benchmark.

    uv run python loadtests/seed.py --customers 100000 --preferences 5

Writes into PREFS_DATABASE_URL, or the embedded PostgreSQL under PREFS_DATA_DIR (the keys come
from ``prefs.settings.load()``, exactly as ``prefs serve`` reads them). Every customer gets a data
key wrapped under the master keyring, an encrypted loyalty card with its blind indexes, a subject
of the dev issuer, encrypted preferences and a `pos` grant (all fields, all preferences) with its
ConsentGiven ledger record, so ``prefs consent verify`` passes. A share of them (``--partner-share``,
drawn per partner) also grants each load-test partner (``--partners``, ``ptn_`` keys) all fields of
all preferences: a further ConsentGiven record on the same chain, and the partner's pairwise
reference, exactly as a grant through the API leaves them. Every other customer (even indexes)
also lets tills add what they buy (a `purchases` grant, no fields). The retailer's catalogue
(about 2 500 products, every SKU the preferences draw, one in seven discontinued) is imported
first. Rows go in with binary COPY, one transaction per batch, the encryption spread over worker
processes.

Card numbers and subjects are derived from a run number and the customer's index, so load tests
can pick valid cards at random; the JSON written (``--output``) says how, and carries till keys,
partner keys and a sample of the customers who granted each partner (subject and reference).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from catalogue import catalogue_products, preference

from prefs import credentials, db
from prefs.catalogue import service as catalogue_service
from prefs.catalogue.schemas import ImportRow
from prefs.consents import ledger
from prefs.consents import service as consents
from prefs.consents.schemas import Recipient
from prefs.crypto import BlindIndex, DataKey, Vault
from prefs.products import Product
from prefs.sealed_preferences import Content, seal_purchases, written
from prefs.settings import DEV_ISSUER, Settings, load

CARD_FORMAT = (
    "77{run:04d}{index:08d}"  # 14 digits; nothing else the seed or a test makes starts with 77
)
SUBJECT_FORMAT = "loadtest-{run:04d}-{index:08d}"
UNKNOWN_CARD_PREFIX = "66"  # never issued: lookups with it must answer 404
FIELDS = ["product", "attributes", "note"]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "seed.json"

COLUMNS = {
    "customers": [
        "customer_id",
        "card_ct",
        "created_at",
        "updated_at",
        "ledger_seq",
        "ledger_head",
    ],
    "customer_keys": ["customer_id", "generation", "master_version", "wrapped", "created_at"],
    "customer_subjects": ["subject_hash", "index_version", "customer_id"],
    "card_index": ["card_hash", "index_version", "customer_id"],
    "preferences": [
        "customer_id",
        "preference_id",
        "rank",
        "status",
        "purchases_ct",
        "sealed",
        "product_ct",
        "attributes_ct",
        "note_ct",
        "sku_index",
        "sku_index_of",
        "created_at",
        "updated_at",
    ],
    "consents": [
        "customer_id",
        "audience",
        "fields",
        "preference_ids",
        "expires_at",
        "receipt_id",
        "granted_at",
        "updated_at",
    ],
    "consent_ledger": [
        "customer_id",
        "seq",
        "receipt_id",
        "recorded_at",
        "audience",
        "state",
        "receipt",
        "mac_version",
        "prev_hash",
        "hash",
    ],
    "partner_refs": ["partner_id", "ref", "customer_id", "created_at"],
}
PURCHASES_EVERY = 2  # customers 0, 2, 4, … of each run let tills add what they buy
GRANTS_SAMPLED_PER_BATCH = 100  # partner grants each batch reports for the JSON's sample
GRANTS_SAMPLED_PER_RUN = 300  # per partner, kept in the JSON


def card_number(run: int, index: int) -> str:
    return CARD_FORMAT.format(run=run, index=index)


def subject(run: int, index: int) -> str:
    return SUBJECT_FORMAT.format(run=run, index=index)


@dataclass(frozen=True)
class Partner:
    id: uuid.UUID
    name: str

    @property
    def audience(self) -> str:
        return f"partner:{self.id}"


@dataclass(frozen=True)
class Batch:
    run: int
    start: int
    count: int
    preferences: int
    partners: tuple[Partner, ...] = ()
    partner_share: float = 0.0
    per_field: bool = False  # preferences in the format before revision 0016


@dataclass(frozen=True)
class Written:
    """What one batch put in: customers, rows, seconds spent, and a sample of partner grants."""

    customers: int
    rows: int
    crypto_seconds: float
    copy_seconds: float
    grants: list[tuple[int, str, str]]  # (customer index, partner id, pairwise reference)


def _sealed(
    key: DataKey, index: BlindIndex, pid: uuid.UUID, content: dict[str, Any]
) -> tuple[Any, ...]:
    """sealed, product_ct, attributes_ct, note_ct, sku_index, sku_index_of: one ciphertext with
    the per-field copy the previous release reads (revision 0016's expand step) and the SKU's
    keyed index (revision 0018), as the service writes them."""
    product = msgspec.convert(content["product"], Product)
    kept = written(key, index, pid, Content(product, content["attributes"], content["note"]))
    return (
        kept.sealed,
        kept.product_ct,
        kept.attributes_ct,
        kept.note_ct,
        kept.sku_index,
        kept.sku_index_of,
    )


def _per_field(
    key: DataKey, index: BlindIndex, pid: uuid.UUID, content: dict[str, Any]
) -> tuple[Any, ...]:
    """The same, one ciphertext per field, as written before revision 0016 (for measuring what
    reading that format costs, and the backfills that convert and index it)."""
    note = content["note"]

    def sealed_field(column: str, value: Any) -> bytes:
        return key.encrypt(msgspec.json.encode(value), "preferences", column, pid)

    return (
        None,
        sealed_field("product", content["product"]),
        sealed_field("attributes", content["attributes"]),
        None if note is None else sealed_field("note", note),
        None,
        None,
    )


class Writer:
    """One worker process: its own vault and database connection, reused for every batch."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.vault = Vault.from_settings(settings.master_keys, settings.index_keys)
        self.controller = settings.controller
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection = self.loop.run_until_complete(db.connect(url))
        self.pos = Recipient(kind="pos", name="Store tills at checkout")
        self.purchases = Recipient(
            kind="purchases", name="Store tills, adding what you buy to your locker"
        )

    def rows(
        self, batch: Batch
    ) -> tuple[dict[str, list[tuple[Any, ...]]], list[tuple[int, str, str]]]:
        """Every row of a batch of customers, encrypted as the services encrypt them, and a
        sample of the partner grants among them."""
        vault, index = self.vault, self.vault.index
        rng = random.Random(batch.run * 100_000_000 + batch.start)
        now = datetime.now(UTC)
        today = now.date()
        tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in COLUMNS}
        grants: list[tuple[int, str, str]] = []
        for i in range(batch.start, batch.start + batch.count):
            customer_id = uuid.uuid4()
            key, wrapped = vault.envelope.new_data_key(customer_id)
            enrolled = now - timedelta(days=rng.randrange(1, 900), seconds=rng.randrange(86_400))
            card = card_number(batch.run, i)
            tables["customer_keys"].append(
                (
                    customer_id,
                    key.generation,
                    vault.envelope.master_version(wrapped),
                    wrapped,
                    enrolled,
                )
            )
            for version, subject_hash in index.subjects(DEV_ISSUER, subject(batch.run, i)).items():
                tables["customer_subjects"].append((subject_hash, version, customer_id))
            for version in index.versions:  # as confirmed at a till: every till finds it
                tables["card_index"].append((index.card(card, version), version, customer_id))
            for rank in range(1, batch.preferences + 1):
                content = preference(rng, rank, today)
                pid = uuid.uuid4()
                tables["preferences"].append(
                    (
                        customer_id,
                        pid,
                        rank,
                        content["status"],
                        seal_purchases(
                            key, pid, content["purchases"], content["last_purchased_on"]
                        ),
                        *(_per_field if batch.per_field else _sealed)(key, index, pid, content),
                        enrolled,
                        enrolled,
                    )
                )
            seq, head = self.grant(tables, customer_id, "pos", self.pos, 0, ledger.GENESIS)
            if i % PURCHASES_EVERY == 0:  # tills may add what they buy
                seq, head = self.grant(
                    tables, customer_id, "purchases", self.purchases, seq, head, fields=[]
                )
            for partner in batch.partners:
                if rng.random() >= batch.partner_share:
                    continue
                who = Recipient(kind="partner", name=partner.name, id=partner.id)
                seq, head = self.grant(tables, customer_id, partner.audience, who, seq, head)
                ref = index.pairwise(partner.id, customer_id)
                tables["partner_refs"].append((partner.id, ref, customer_id, now))
                grants.append((i, str(partner.id), ref))
            tables["customers"].append(
                (
                    customer_id,
                    key.encrypt(card.encode(), "customers", "card", customer_id),
                    enrolled,
                    enrolled,
                    seq,
                    head,
                )
            )
        return tables, rng.sample(grants, min(len(grants), GRANTS_SAMPLED_PER_BATCH))

    def grant(
        self,
        tables: dict[str, list[tuple[Any, ...]]],
        customer_id: uuid.UUID,
        audience: str,
        who: Recipient,
        seq: int,
        head: bytes,
        fields: list[str] = FIELDS,
    ) -> tuple[int, bytes]:
        """A grant of ``fields`` (default: all) of all preferences, appended to the customer's
        ledger chain after ``seq`` / ``head``; returns the new head (as consents.service.grant
        records it)."""
        index = self.vault.index
        receipt = consents._receipt(
            customer_id, audience, who, self.controller, "ConsentGiven", fields, "all", None
        )
        body = msgspec.to_builtins(receipt)
        seq += 1
        digest = ledger.record_hash(
            index, index.primary, customer_id, seq, head, ledger.canonical(body)
        )
        tables["consent_ledger"].append(
            (
                customer_id,
                seq,
                receipt.receipt_id,
                receipt.timestamp,
                audience,
                "ConsentGiven",
                body,
                index.primary,
                head,
                digest,
            )
        )
        tables["consents"].append(
            (
                customer_id,
                audience,
                fields,
                None,
                None,
                receipt.receipt_id,
                receipt.timestamp,
                receipt.timestamp,
            )
        )
        return seq, digest

    async def _copy(self, tables: dict[str, list[tuple[Any, ...]]]) -> None:
        async with self.conn.transaction():
            for name, records in tables.items():
                await self.conn.copy_records_to_table(name, records=records, columns=COLUMNS[name])

    def write(self, batch: Batch) -> Written:
        """Seed one batch."""
        started = time.perf_counter()
        tables, grants = self.rows(batch)
        encrypted = time.perf_counter()
        self.loop.run_until_complete(self._copy(tables))
        return Written(
            customers=batch.count,
            rows=sum(len(records) for records in tables.values()),
            crypto_seconds=encrypted - started,
            copy_seconds=time.perf_counter() - encrypted,
            grants=grants,
        )


_writer: Writer | None = None


def _start_worker(url: str, settings: Settings) -> None:
    global _writer
    _writer = Writer(url, settings)


def _write(batch: Batch) -> Written:
    assert _writer is not None
    return _writer.write(batch)


async def _fresh_run(conn: asyncpg.Connection, vault: Vault) -> int:
    """A run number whose card numbers are not in this database yet."""
    while True:
        run = random.randrange(1000, 10_000)
        taken = await conn.fetchval(
            "SELECT 1 FROM card_index WHERE card_hash = ANY($1::bytea[])",
            vault.index.all_digests("card", card_number(run, 0).encode()),
        )
        if taken is None:
            return run


async def _identity(conn: asyncpg.Connection) -> str:
    row = await conn.fetchrow(
        "SELECT system_identifier::text, current_database() FROM pg_control_system()"
    )
    assert row is not None
    return f"{row[0]}/{row[1]}"


@dataclass(frozen=True)
class Prepared:
    run: int
    identity: str
    previous: dict[str, Any] | None
    tills: list[dict[str, str]]
    partners: list[dict[str, str]]


LIVE_PARTNER = """
SELECT p.name FROM partners p JOIN credentials c USING (partner_id)
WHERE p.partner_id = $1 AND p.retired_at IS NULL AND c.credential_id = $2 AND c.revoked_at IS NULL
"""


async def _partners(
    conn: asyncpg.Connection, previous: dict[str, Any] | None, wanted: int, run: int
) -> list[dict[str, str]]:
    """The load-test partners: those the previous JSON names (while live), then new ones."""
    kept = []
    for partner in (previous or {}).get("partners", [])[:wanted]:
        name = await conn.fetchval(
            LIVE_PARTNER, uuid.UUID(partner["id"]), uuid.UUID(partner["credential"])
        )
        if name is not None:
            kept.append({**partner, "name": name})
    for n in range(len(kept), wanted):
        credential, api_key = await credentials.create(
            conn,
            "partner",
            f"Load-test tailor {n + 1} (run {run})",
            description="Makes discontinued clothes again, to order (load test)",
        )
        assert credential.partner_id is not None
        kept.append(
            {
                "id": str(credential.partner_id),
                "name": credential.name,
                "key": api_key,
                "credential": str(credential.id),
            }
        )
    return kept


STORE = "INSERT INTO stores (store_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING"


async def _prepare(
    url: str, vault: Vault, tills: int, stores: int, partners: int, output: Path
) -> Prepared:
    conn = await db.connect(url)
    try:
        run = await _fresh_run(conn, vault)
        identity = await _identity(conn)
        previous = _previous(output, identity)
        report = await catalogue_service.import_rows(
            conn,
            vault,
            ((n, msgspec.convert(p, ImportRow)) for n, p in enumerate(catalogue_products(), 1)),
            catalogue_service.ImportReport(),
        )
        assert not report.refused, report.refused
        keys = []
        for n in range(stores):
            await conn.execute(STORE, f"{101 + n:04d}", f"Load-test store {101 + n:04d}")
        for n in range(tills):
            store = f"{101 + n % stores:04d}"
            credential, api_key = await credentials.create(
                conn, "pos", f"Load-test till {n // stores + 1}", store=store
            )
            keys.append({"key": api_key, "store": store, "id": str(credential.id)})
        return Prepared(
            run, identity, previous, keys, await _partners(conn, previous, partners, run)
        )
    finally:
        await conn.close()


GRANTED_REF = """
SELECT r.customer_id FROM partner_refs r
JOIN consents g ON g.customer_id = r.customer_id AND g.audience = 'partner:' || r.partner_id::text
WHERE r.partner_id = $1 AND r.ref = $2
"""
LEDGER_HEAD = "SELECT ledger_seq, ledger_head FROM customers WHERE customer_id = $1"


async def _finish(
    url: str, vault: Vault, run: int, analyse: bool, grant: dict[str, str] | None
) -> dict[str, Any]:
    """ANALYZE the seeded tables, then read one seeded customer (and, when there is one, one
    seeded partner grant) back through the services."""
    from prefs.customers.service import find_customer_id, profile
    from prefs.preferences.service import list_preferences

    conn = await db.connect(url)
    try:
        started = time.perf_counter()
        if analyse:
            await conn.execute("VACUUM (ANALYZE) " + ", ".join(COLUMNS))
        vacuum_seconds = time.perf_counter() - started
        customer_id = await find_customer_id(
            conn, vault.index.subjects(DEV_ISSUER, subject(run, 0))
        )
        assert customer_id is not None, "the first seeded customer cannot be found by subject"
        card = (await profile(conn, vault, customer_id)).card
        assert card == card_number(run, 0), "the seeded card does not decrypt to its number"
        assert await list_preferences(conn, vault, customer_id), "no seeded preferences decrypt"
        if grant is not None:
            partner_id = uuid.UUID(grant["partner"])
            granting = await conn.fetchval(GRANTED_REF, partner_id, grant["ref"])
            assert granting is not None, "a seeded partner reference leads to no live grant"
            assert vault.index.pairwise(partner_id, granting) == grant["ref"], (
                "a seeded partner reference is not the service's pairwise reference"
            )
            head = await conn.fetchrow(LEDGER_HEAD, granting)
            assert head is not None
            fault = await ledger.verify_customer(
                conn, vault.index, granting, head["ledger_seq"], head["ledger_head"]
            )
            assert fault is None, f"a seeded ledger chain does not verify: {fault}"
        total = await conn.fetchval("SELECT count(*) FROM customers")
        return {"vacuum_analyze_seconds": round(vacuum_seconds, 1), "customers_in_database": total}
    finally:
        await conn.close()


def _previous(output: Path, identity: str) -> dict[str, Any] | None:
    if not output.exists():
        return None
    previous: dict[str, Any] = json.loads(output.read_text())
    return previous if previous.get("database") == identity else None


def _grant_sample(
    previous: dict[str, Any] | None,
    partners: list[dict[str, str]],
    run: int,
    grants: list[tuple[int, str, str]],
) -> list[dict[str, str]]:
    """Customers who granted a partner (subject and reference): earlier runs' sample for the
    partners still in use, and up to GRANTS_SAMPLED_PER_RUN per partner of this run."""
    in_use = {p["id"] for p in partners}
    earlier = [
        g
        for g in (previous or {}).get("sample", {}).get("partner_grants", [])
        if g["partner"] in in_use
    ]
    rng = random.Random(run)
    rng.shuffle(grants)
    taken: dict[str, int] = {}
    fresh = []
    for index, partner, ref in sorted(grants, key=lambda g: g[1]):
        if taken.get(partner, 0) < GRANTS_SAMPLED_PER_RUN:
            taken[partner] = taken.get(partner, 0) + 1
            fresh.append({"partner": partner, "ref": ref, "subject": subject(run, index)})
    return earlier + fresh


def seed(
    url: str,
    settings: Settings,
    customers: int,
    preferences: int,
    workers: int,
    batch_size: int,
    tills: int,
    stores: int,
    output: Path,
    analyse: bool,
    partners: int = 2,
    partner_share: float = 0.25,
    per_field: bool = False,
) -> dict[str, Any]:
    """Seed ``customers`` new customers and write (or extend) the JSON at ``output``."""
    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    prepared = asyncio.run(_prepare(url, vault, tills, stores, partners, output))
    run, previous = prepared.run, prepared.previous
    seeded_partners = tuple(Partner(uuid.UUID(p["id"]), p["name"]) for p in prepared.partners)
    print(
        f"seeding {customers:,} customers x {preferences} preferences (run {run}) with {workers} "
        f"worker process(es), {batch_size:,} customers per COPY batch; each grants each of "
        f"{len(seeded_partners)} partner(s) with probability {partner_share:g}",
        flush=True,
    )
    batches = [
        Batch(
            run,
            start,
            min(batch_size, customers - start),
            preferences,
            seeded_partners,
            partner_share,
            per_field,
        )
        for start in range(0, customers, batch_size)
    ]
    started = time.perf_counter()
    done, rows, crypto_seconds, copy_seconds = 0, 0, 0.0, 0.0
    grants: list[tuple[int, str, str]] = []
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_start_worker, initargs=(url, settings)) as pool:
        for written in pool.imap_unordered(_write, batches):
            done += written.customers
            rows += written.rows
            crypto_seconds += written.crypto_seconds
            copy_seconds += written.copy_seconds
            grants.extend(written.grants)
            elapsed = time.perf_counter() - started
            if done == customers or len(batches) < 20 or done % (batch_size * 10) == 0:
                print(
                    f"  {done:>10,} / {customers:,} customers  {done / elapsed:>8,.0f}/s",
                    flush=True,
                )
    seconds = time.perf_counter() - started
    partner_sample = _grant_sample(previous, prepared.partners, run, grants)
    finish = asyncio.run(
        _finish(url, vault, run, analyse, partner_sample[-1] if partner_sample else None)
    )
    print(
        f"seeded {customers:,} customers ({rows:,} rows) in {seconds:.1f} s: "
        f"{customers / seconds:,.0f} customers/s, {rows / seconds:,.0f} rows/s "
        f"(worker time: {crypto_seconds:.1f} s building and encrypting, "
        f"{copy_seconds:.1f} s in COPY)"
    )
    if analyse:
        print(f"VACUUM (ANALYZE) of the seeded tables: {finish['vacuum_analyze_seconds']} s")

    runs = [
        *(previous["runs"] if previous else []),
        {
            "run": run,
            "customers": customers,
            "preferences": preferences,
            "partner_share": partner_share if seeded_partners else 0.0,
            "purchases_every": PURCHASES_EVERY,
        },
    ]
    rng = random.Random(run)
    sample = [(r["run"], rng.randrange(r["customers"])) for r in runs for _ in range(200)]
    document = {
        "database": prepared.identity,
        "dev_issuer": DEV_ISSUER,
        "dev_issuer_key": str(settings.dev_issuer_key_path),
        "card_format": CARD_FORMAT,
        "subject_format": SUBJECT_FORMAT,
        "unknown_card_prefix": UNKNOWN_CARD_PREFIX,
        "runs": runs,
        "customers": sum(r["customers"] for r in runs),
        "customers_in_database": finish["customers_in_database"],
        "tills": prepared.tills,
        "partners": prepared.partners,
        "sample": {
            "cards": [card_number(r, i) for r, i in sample],
            "subjects": [subject(r, i) for r, i in sample],
            "partner_grants": partner_sample,
        },
        "last_seed": {
            "customers": customers,
            "seconds": round(seconds, 1),
            "customers_per_second": round(customers / seconds),
            "workers": workers,
            "at": date.today().isoformat(),
        },
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds live API keys
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=1)
    print(
        f"wrote {output} ({document['customers']:,} seeded customers in this database, "
        f"{len(prepared.tills)} till keys, {len(prepared.partners)} partner keys, "
        f"{len(partner_sample):,} sampled partner grants)"
    )
    return document


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--preferences", type=int, default=5, help="preferences per customer")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes encrypting and copying",
    )
    parser.add_argument("--batch", type=int, default=2_000, help="customers per COPY transaction")
    parser.add_argument("--tills", type=int, default=16, help="till API keys to create")
    parser.add_argument("--stores", type=int, default=4, help="stores the till keys spread over")
    parser.add_argument(
        "--partners", type=int, default=2, help="partner API keys (reused from --output if live)"
    )
    parser.add_argument(
        "--partner-share",
        type=float,
        default=0.25,
        help="chance that a customer grants a given partner consent (all fields and preferences)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--per-field",
        action="store_true",
        help="write preferences one ciphertext per field, as before revision 0016 (to measure"
        " reading that format; `prefs migrate` converts them)",
    )
    parser.add_argument(
        "--no-analyse",
        dest="analyse",
        action="store_false",
        help="skip VACUUM (ANALYZE) of the seeded tables",
    )
    args = parser.parse_args()

    settings = load()
    embedded = None
    url = settings.database_url
    if url is None:
        embedded = db.EmbeddedPostgres(settings.data_dir / "pg")
        url = embedded.start()
    try:
        db.migrate(url)
        seed(
            url,
            settings,
            args.customers,
            args.preferences,
            max(1, args.workers),
            args.batch,
            args.tills,
            max(1, args.stores),
            args.output,
            args.analyse,
            max(0, args.partners),
            min(1.0, max(0.0, args.partner_share)),
            args.per_field,
        )
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
