"""The `prefs` command: serve, migrate, tokens, credentials and key operations."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from prefs import db
from prefs.catalogue import commands as catalogue_commands
from prefs.settings import (
    EMBEDDED_PGDATA,
    DatabaseSettings,
    Settings,
    SettingsError,
    database_pooler,
    database_settings,
    load,
    log_settings,
)
from prefs.stores import commands as store_commands

T = TypeVar("T")


def _settings() -> Settings:
    """The settings, and in development the token issuer's key, checked here: what is wrong is
    one line before anything starts, not a traceback from each worker."""
    from prefs.auth import DevIssuer

    try:
        settings = load()
        if settings.dev_issuer:
            DevIssuer(settings.dev_issuer_key_path)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    return settings


def _database_settings() -> DatabaseSettings:
    """The database settings alone, for commands that need no keys."""
    try:
        return database_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


class Database:
    """The configured database, or the embedded one under the data dir (started on demand)."""

    def __init__(self, settings: Settings | DatabaseSettings) -> None:
        self.settings = settings
        self.embedded: db.EmbeddedPostgres | None = None

    def __enter__(self) -> str:
        if self.settings.database_url:
            try:
                asyncio.run(db.check_reachable(self.settings.database_url))
            except db.Unreachable as error:
                raise click.ClickException(f"PREFS_DATABASE_URL: {error}") from None
            return self.settings.database_url
        self.embedded = db.EmbeddedPostgres(
            self.settings.data_dir / EMBEDDED_PGDATA, db.embedded_settings()
        )
        return self.embedded.start()

    def __exit__(self, *_: object) -> None:
        if self.embedded is not None:
            self.embedded.stop()


def _run(url: str, action: Callable[[Any], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await db.connect(url, pooler=database_pooler(os.environ))
        try:
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


@click.group()
def main() -> None:
    """prefs — the customer's own preference locker."""
    from prefs.observability import configure_logging

    try:
        configure_logging(log_settings())
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
def serve(host: str, port: int, workers: int) -> None:
    """Serve the API and the web page (on an embedded PostgreSQL unless PREFS_DATABASE_URL is set)."""
    settings = _settings()
    listening = _bind(host, port)  # before the database is touched or anything is printed
    with listening, Database(settings) as url:
        schema = _schema(url)
        if schema.state != "ahead":  # a later release's schema serves this one as it is
            db.migrate(url, pooler=settings.database_pooler)
        settings = load({**os.environ, "PREFS_DATABASE_URL": url})
        if schema.state == "behind":  # each start after this would walk the tables again
            _seal_backlog(settings, url)
        base = f"http://{host}:{listening.getsockname()[1]}"
        demo = _demo(settings, url)
        click.echo(f"prefs ({settings.env}) listening on {base}")
        click.echo(f"  web page: {base}/")
        click.echo(
            f"  database: {'embedded PostgreSQL in ' + str(settings.data_dir / EMBEDDED_PGDATA) if not os.environ.get('PREFS_DATABASE_URL') else 'PREFS_DATABASE_URL'}"
        )
        if settings.dev_issuer:
            click.echo("  a development customer token: uv run prefs token --subject alice")
        if demo is not None:
            _print_demo(demo, base)
        sys.stdout.flush()
        # uvicorn re-raises SIGTERM and SIGINT (Ctrl-C) after its graceful shutdown; turn either
        # into a clean return so the embedded database is stopped too.
        signal.signal(signal.SIGTERM, _stop)
        try:
            _run_server(settings, url, listening, workers)
        except (_Stop, KeyboardInterrupt):
            pass
    click.echo("prefs stopped")


class _Stop(Exception):
    pass


def _stop(*_: object) -> None:
    raise _Stop


def _bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound (as uvicorn binds it) so that a port in use is one line."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise click.ClickException(
                f"port {port} on {host} is in use: stop what listens there, or choose --port"
            ) from None
        raise click.ClickException(f"cannot listen on {host}:{port} ({error.strerror})") from None
    sock.set_inheritable(True)  # worker processes serve on it too
    return sock


def _run_server(settings: Settings, url: str, listening: socket.socket, workers: int) -> None:
    import uvicorn

    from prefs.serving import Protocol  # problem+json for a request uvicorn cannot parse

    if workers == 1:
        from prefs.app import create_app

        uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                http=Protocol,
                log_config=None,
                access_log=False,  # prefs.requests logs each request (prefs.observability)
                lifespan="on",
                timeout_graceful_shutdown=30,
            )
        ).run(sockets=[listening])
    else:
        from uvicorn.supervisors import Multiprocess

        os.environ["PREFS_DATABASE_URL"] = url
        metrics_dir = settings.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, mode=0o700)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        os.environ["PREFS_WORKER_LOGGING"] = "1"  # spawned workers set up the same JSON logs
        config = uvicorn.Config(
            "prefs.app:create_app",
            factory=True,
            workers=workers,
            http=Protocol,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
        )
        Multiprocess(config, sockets=[listening]).run()  # what uvicorn.run does, on our socket


def _demo(settings: Settings, url: str) -> Any:
    """Development only: make sure the demo customer, till and partner exist."""
    if not settings.dev_issuer:
        return None
    from prefs.crypto import Vault
    from prefs.web.demo import ensure_demo

    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    return _run(url, lambda conn: ensure_demo(conn, vault, settings))


def _print_demo(demo: Any, base: str) -> None:
    click.echo(
        f"  demo customer: sign in on the page, or: uv run prefs token --subject {demo.subject}"
    )
    if demo.till_key:
        click.echo(f"  demo till key: {demo.till_key}")
        if demo.card:
            click.echo(
                f"  look the demo customer up as a till:\n    curl -s -X POST {base}/v1/pos/lookup "
                f"-H 'Authorization: Bearer {demo.till_key}' -H 'Content-Type: application/json' "
                f'-d \'{{"card": "{demo.card}"}}\''
            )
        click.echo(
            "  confirm a card a customer added, as the till that scans it while they show a "
            f"checkout code:\n    curl -s -X POST {base}/v1/pos/cards/confirm "
            f"-H 'Authorization: Bearer {demo.till_key}' -H 'Content-Type: application/json' "
            '-d \'{"card": "CARD", "code": "CODE"}\''
        )
    if demo.partner_key:
        click.echo(f"  demo partner key: {demo.partner_key}")
    if demo.hint:
        click.echo(f"  note: {demo.hint}")


@main.command()
def migrate() -> None:
    """Upgrade the database schema to the newest revision."""
    settings = _settings()
    with Database(settings) as url:
        schema = _schema(url)
        if schema.state == "ahead":
            click.echo(
                f"schema at {schema.revision}, a later release's (this one's is "
                f"{db.head_revision()}): nothing to do"
            )
            return
        db.migrate(url, pooler=settings.database_pooler)
        click.echo(f"schema at {db.head_revision()}")
        _seal_backlog(settings, url)


def _schema(url: str) -> db.Schema:
    """Where the schema stands; a revision neither this release nor a later one made stops here."""
    head = db.head_revision()
    schema = _run(url, lambda conn: db.schema_state(conn, head))
    if schema.state == "foreign":
        raise click.ClickException(
            f"the database's schema is at revision {schema.revision}, which is neither this "
            f"release's ({head}) nor a later release's made from it: run the release that "
            "migrated it"
        )
    return schema


def _seal_backlog(settings: Settings, url: str) -> None:
    """Seal what revision 0009's expand step left in clear: access-log entries, purchase
    histories and Idempotency-Key values; seal each preference kept field by field before
    revision 0016 as one ciphertext; index the SKU of each preference not indexed under the
    primary index key (revision 0018), then recount the demand of the customers keeping a SKU
    whose status moved (revision 0018 records every SKU as moved) (it needs the keys: not in a
    migration). `prefs migrate` runs it every time (so it resumes one that was stopped), `prefs
    serve` when it migrated."""
    from prefs import idempotency
    from prefs.access_log import service as access_log
    from prefs.insights import service as insights
    from prefs.preferences import service as preferences

    vault = _vault(settings)

    async def action(conn: Any) -> tuple[int, int, int, int, int, int]:
        return (
            sum([done async for done in access_log.seal_backlog(conn, vault)]),
            sum([done async for done in preferences.seal_purchase_backlog(conn, vault)]),
            await idempotency.hash_legacy_keys(conn, vault),
            sum([done async for done in preferences.seal_content_backlog(conn, vault)]),
            sum([done async for done in preferences.index_sku_backlog(conn, vault)]),
            await insights.recount_keepers(conn, vault),
        )

    visits, histories, keys, contents, skus, recounted = _run(url, action)
    if visits or histories or keys:
        click.echo(
            f"sealed {visits} access-log entries and {histories} purchase histories kept in"
            f" clear before, and replaced {keys} Idempotency-Key values by keyed hashes"
        )
    if contents:
        click.echo(f"sealed {contents} preferences kept field by field as one ciphertext each")
    if skus:
        click.echo(f"indexed the SKUs of {skus} preferences under the primary index key")
    if recounted:
        click.echo(f"recounted the demand of {recounted} customers by the catalogue's statuses")


@main.command()
@click.option("--subject", required=True, help="The customer's subject (any stable name).")
@click.option(
    "--ttl",
    default=3600,
    show_default=True,
    type=click.IntRange(60, 86_400),  # the service refuses tokens that live longer
    help="Seconds until the token expires.",
)
def token(subject: str, ttl: int) -> None:
    """Print a signed customer token from the development issuer (development only)."""
    from prefs.auth import DevIssuer

    settings = _settings()
    if not settings.dev_issuer:
        raise click.ClickException("the development issuer is disabled in production")
    click.echo(DevIssuer(settings.dev_issuer_key_path).mint(subject, ttl))


@main.command()
@click.option(
    "--output", type=click.Path(dir_okay=False), default="openapi/openapi.json", show_default=True
)
def openapi(output: str) -> None:
    """Write the OpenAPI document generated from the app."""
    from pathlib import Path

    from prefs.app import create_app
    from prefs.openapi import render

    Path(output).write_text(render(create_app(_settings())))
    click.echo(f"wrote {output}")


@main.group()
def credentials() -> None:
    """Create, list and revoke API keys for tills, partners and insights."""


# where each kind of key goes, told as it is shown (kind -> the sentence)
KEEP_THE_KEY = {
    "pos": "store it in the till's settings now (it works only at its store).",
    "partner": "give it to the partner over a secure channel now; its system sends it as a "
    "Bearer token.",
    "insights": "store it in the reporting tool that reads the demand statistics "
    "(GET /v1/insights/…) now; it reads only anonymous counts.",
}


@credentials.command("create")
@click.option("--kind", type=click.Choice(["pos", "partner", "insights"]), required=True)
@click.option("--name", required=True, help="Display name customers see in their access log.")
@click.option(
    "--store", help="The store a till key belongs to (pos only; one of `prefs stores list`)."
)
@click.option("--description", help="What the partner does (partner only).")
def credentials_create(kind: str, name: str, store: str | None, description: str | None) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from prefs import credentials as service
    from prefs.errors import Problem

    async def action(conn: Any) -> tuple[Any, str]:
        return await service.create(conn, kind, name, store=store, description=description)  # type: ignore[arg-type]

    try:
        credential, api_key = _at_head(action)  # a fresh database: "run prefs migrate first"
    except Problem as problem:
        raise click.ClickException(problem.detail) from None
    click.echo(f"id:      {credential.id}")
    if credential.partner_id:
        click.echo(f"partner: {credential.partner_id}")
    click.echo(f"key:     {api_key}")
    click.echo(f"The key is shown only this once: {KEEP_THE_KEY[credential.kind]}")


@credentials.command("list")
def credentials_list() -> None:
    """List keys (never the keys themselves)."""
    from prefs import credentials as service

    rows = _at_head(service.list_all)
    for c in rows:
        state = f"revoked {c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "active"
        where = (
            f"store {c.store}" if c.store else (f"partner {c.partner_id}" if c.partner_id else "")
        )
        click.echo(f"{c.id}  {c.kind:<8} {state:<24} {c.name}  {where}".rstrip())


@credentials.command("revoke")
@click.argument("credential_id", type=click.UUID)
def credentials_revoke(credential_id: Any) -> None:
    """Revoke a key: refused from its next request on."""
    from prefs import credentials as service
    from prefs.errors import Problem

    with Database(_settings()) as url:
        try:
            credential = _run(url, lambda conn: service.revoke(conn, credential_id))
        except Problem as problem:
            raise click.ClickException(problem.detail) from None
    click.echo(f"revoked {credential.id} ({credential.kind}, {credential.name})")


@main.group()
def consent() -> None:
    """Consent ledger operations."""


@consent.command("verify")
def consent_verify() -> None:
    """Check every customer's consent chain; name any customer whose chain was altered.

    Exits 1 when a chain was altered; 2 when none was, but records sealed under an index key no
    longer in PREFS_INDEX_KEY could not be checked (add the old key after the primary for this
    command to check them too); 0 when everything verified.
    """
    from prefs.consents import ledger
    from prefs.crypto import Vault

    settings = _settings()
    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    with Database(settings) as url:
        result = _run(url, lambda conn: ledger.verify_all(conn, vault.index))
    for fault in result.faults:
        click.echo(f"ALTERED customer {fault.customer_id} at record {fault.seq}: {fault.reason}")
    for version, count in result.unverifiable.items():
        click.echo(
            f"NOT VERIFIED: {count} records sealed under index key v{version}, which is not in "
            "PREFS_INDEX_KEY, cannot be verified (this is not evidence of tampering; their links "
            "in each chain were checked). To check them, run this command with that key listed "
            "after the primary."
        )
    click.echo(f"{result.checked} chains checked, {len(result.faults)} altered")
    if result.faults:
        sys.exit(1)
    if result.unverifiable:
        sys.exit(2)


def _vault(settings: Settings) -> Any:
    from prefs.crypto import Vault

    return Vault.from_settings(settings.master_keys, settings.index_keys)


@main.group()
def keys() -> None:
    """Master-key and index-key rotation."""


@keys.command("rotate")
@click.option("--batch", default=500, show_default=True, type=click.IntRange(1, 10_000))
def keys_rotate(batch: int) -> None:
    """Rewrap every data key under the primary PREFS_MASTER_KEYS version (resumable, online)."""
    from prefs.keys import service

    settings = _settings()
    vault = _vault(settings)
    from prefs.errors import Problem

    with Database(settings) as url:
        try:
            done = _run(
                url,
                lambda conn: service.rotate(
                    conn, vault, batch, lambda n: click.echo(f"  rewrapped {n} data keys so far")
                ),
            )
        except Problem as problem:
            raise click.ClickException(problem.detail) from None
    click.echo(
        f"rotation complete: {done} data keys rewrapped under version {vault.envelope.master.primary}"
    )


@keys.command("status")
def keys_status() -> None:
    """How many wraps, blind indexes and ledger records each key version holds."""
    from prefs.keys import service

    settings = _settings()
    vault = _vault(settings)
    with Database(settings) as url:
        state = _run(url, lambda conn: service.status(conn, vault))
    click.echo(f"master keys: primary v{state.master_primary}")
    for version, count in state.wraps_by_master_version.items():
        click.echo(f"  v{version}: {count} data keys wrapped")
    for version in state.retired_master_versions:
        click.echo(f"  v{version}: retired")
    click.echo(f"index keys: primary v{state.index_primary}")
    for label, counts in (
        ("cards", state.cards_by_index_version),
        ("subjects", state.subjects_by_index_version),
        ("ledger records", state.ledger_records_by_index_version),
    ):
        for version, count in counts.items():
            click.echo(f"  v{version}: {count} {label}")
    if state.customers_stranded:
        click.echo(
            f"  {state.customers_stranded} "
            f"{'customer' if state.customers_stranded == 1 else 'customers'} can be found only "
            "under index keys missing from PREFS_INDEX_KEY: they cannot sign in to their data "
            "until that key is configured again"
        )
    if state.customers_not_under_index_primary:
        click.echo(
            f"  {state.customers_not_under_index_primary} customers not yet under the primary "
            "index key (each moves over when they next sign in)"
        )
    if state.cards_not_under_index_primary:
        click.echo(
            f"  {state.cards_not_under_index_primary} cards not yet under the primary index key "
            "(run `prefs keys reindex`)"
        )


@keys.command("retire")
@click.argument("version", type=int)
def keys_retire(version: int) -> None:
    """Mark a master-key version retired; refused while any data key is still wrapped under it."""
    from prefs.errors import Problem
    from prefs.keys import service

    settings = _settings()
    vault = _vault(settings)
    with Database(settings) as url:
        try:
            _run(url, lambda conn: service.retire(conn, vault, version))
        except Problem as problem:
            raise click.ClickException(problem.detail) from None
    click.echo(f"master key v{version} retired: remove it from PREFS_MASTER_KEYS")


@keys.command("reindex")
def keys_reindex() -> None:
    """After adding a new PREFS_INDEX_KEY version: recompute blind indexes under every version."""
    from prefs.keys import service

    settings = _settings()
    vault = _vault(settings)

    async def action(conn: Any) -> tuple[int, Any]:
        done = await service.reindex(
            conn, vault, progress=lambda n: click.echo(f"  indexed {n} cards so far")
        )
        return done, await service.status(conn, vault)

    with Database(settings) as url:
        done, state = _run(url, action)
    click.echo(f"reindex complete: {done} cards indexed under versions {vault.index.versions}")
    if state.customers_not_under_index_primary:
        click.echo(
            f"{state.customers_not_under_index_primary} customers can still be found only under "
            "older index keys: subjects are stored only as hashes, so each moves over when they "
            "next sign in; `prefs keys retire-index` refuses an old version until then"
        )


@keys.command("retire-index")
@click.argument("version", type=int)
def keys_retire_index(version: int) -> None:
    """Check that an index-key version can leave PREFS_INDEX_KEY; refused while anything is
    still found only under it."""
    from prefs.errors import Problem
    from prefs.keys import service

    settings = _settings()
    vault = _vault(settings)
    with Database(settings) as url:
        try:
            ledger_records = _run(url, lambda conn: service.retire_index(conn, vault, version))
        except Problem as problem:
            raise click.ClickException(problem.detail) from None
    click.echo(
        f"index key v{version} is no longer needed for lookups: remove it from PREFS_INDEX_KEY"
    )
    if ledger_records:
        click.echo(
            f"{ledger_records} consent ledger records were sealed under v{version}: keep the key "
            "in your secret store, `prefs consent verify` can check them only with it"
        )


@main.group()
def erasures() -> None:
    """Erasure tombstones."""


@erasures.command("export")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="Where to write the tombstones (JSON; keyed hashes and times, no personal data).",
)
def erasures_export(output: str) -> None:
    """Write every erasure tombstone, to replay on a restored backup that predates them."""
    from prefs.rights import service

    with Database(_settings()) as url:
        found = _run(url, service.tombstones)
    with click.open_file(output, "wb") as handle:
        handle.write(service.encode_tombstones(found))
    click.echo(f"{len(found)} tombstones written", err=True)


@erasures.command("replay")
@click.option(
    "--from",
    "source",
    type=click.File("rb"),
    help="Tombstones from `prefs erasures export` on the live database (recorded here first).",
)
def erasures_replay(source: Any) -> None:
    """Re-apply recorded erasures (run it after restoring a backup)."""
    import msgspec

    from prefs.rights import service

    settings = _settings()
    vault = _vault(settings)
    try:
        carried = service.decode_tombstones(source.read()) if source is not None else []
    except msgspec.DecodeError:
        raise click.ClickException(
            "--from is not a file written by `prefs erasures export`"
        ) from None
    with Database(settings) as url:
        count = _run(url, lambda conn: service.replay_erasures(conn, vault, carried))
    click.echo(f"{count} customers erased again")


@main.command()
def purge() -> None:
    """Purge expired checkout codes, idempotency records and old access-log entries."""
    from prefs.consents.service import terms as consent_terms
    from prefs.retention import service

    settings = _settings()
    vault = _vault(settings)
    with Database(settings) as url:
        purged = _run(
            url,
            lambda conn: service.purge(
                conn, vault, consent_terms(settings), settings.access_log_retention_days
            ),
        )
    if purged is None:
        click.echo("another purge is running; nothing done")
        return
    click.echo(", ".join(f"{name}: {count}" for name, count in purged.items()))


def _at_head(
    action: Callable[[Any], Awaitable[T]], settings: Settings | DatabaseSettings | None = None
) -> T:
    """Run ``action`` on the configured database (``settings``, else every setting loaded),
    once its schema is at this release's head (or a later release's)."""
    with Database(settings or _settings()) as url:
        if _schema(url).state == "behind":
            raise click.ClickException(
                "the database schema is behind this release: run `prefs migrate` first"
            )
        return _run(url, action)


catalogue_commands.register(main, lambda action: _at_head(action, _database_settings()))
store_commands.register(main, _at_head)
