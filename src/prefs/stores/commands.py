"""`prefs stores …`: the directory of stores from the command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from prefs.errors import Problem
from prefs.stores import service
from prefs.stores.schemas import StoreRecord


def _line(store: StoreRecord) -> str:
    state = f"closed {store.closed_at:%Y-%m-%d}" if store.closed_at else "open"
    address = f"  {store.address}" if store.address else ""
    return f"{store.id:<12} {state:<18} {store.name}{address}"


@contextmanager
def _refused() -> Iterator[None]:
    """A refusal in the service's words, as the command's one-line error."""
    try:
        yield
    except Problem as problem:
        raise click.ClickException(problem.detail) from None


def register(main: click.Group, run: Any) -> None:
    """Add `prefs stores` to the command; ``run(action)`` runs an action on a connection."""

    @main.group()
    def stores() -> None:
        """The stores customers reorder from; every till key belongs to one."""

    @stores.command("add")
    @click.argument("store_id")
    @click.option("--name", required=True, help="The name customers see, e.g. 'Oxford Street'.")
    @click.option("--address", help="One line customers see under the name.")
    def add(store_id: str, name: str, address: str | None) -> None:
        """Add a store to the directory (its id is what till keys and reorders name)."""
        with _refused():
            store = service.entry(store_id, name, address)
            added = run(lambda conn: service.add(conn, store))
        click.echo(f"added {_line(added)}")

    @stores.command("list")
    def list_() -> None:
        """Every store, closed ones too."""
        found = run(service.list_all)
        for store in found:
            click.echo(_line(store))
        if not found:
            click.echo("no stores yet: add one with `prefs stores add ID --name NAME`")

    @stores.command("rename")
    @click.argument("store_id")
    @click.option("--name", required=True, help="The new name.")
    @click.option("--address", help="A new address ('' removes it); unchanged when left out.")
    def rename(store_id: str, name: str, address: str | None) -> None:
        """Give a store a new name (and address): customers see it at once."""
        with _refused():
            store = service.entry(store_id, name, address)
            renamed = run(lambda conn: service.rename(conn, store, new_address=address is not None))
        click.echo(f"renamed {_line(renamed)}")

    @stores.command("close")
    @click.argument("store_id")
    def close(store_id: str) -> None:
        """Close a store: customers no longer see it or reorder from it; its tills can still
        finish the reorders it has."""
        with _refused():
            closed, reorders, till_keys = run(lambda conn: service.close(conn, store_id))
        click.echo(f"closed {_line(closed)}")
        if reorders:
            click.echo(
                f"  {reorders} reorder{'s' if reorders != 1 else ''} still to finish there: its "
                "tills still see and move them"
            )
        if till_keys:
            finish = " once those are finished" if reorders else ""
            click.echo(
                f"  {till_keys} till key{'s' if till_keys != 1 else ''} still live: revoke them "
                f"with `prefs credentials revoke ID`{finish} (a store's reorders need its tills)"
            )
        elif reorders:
            click.echo(
                "  no till key of the store is live: create one to finish them, or reopen it "
                f"with `prefs stores reopen {store_id}`"
            )

    @stores.command("reopen")
    @click.argument("store_id")
    def reopen(store_id: str) -> None:
        """Open a closed store again: customers see it and can reorder from it."""
        with _refused():
            opened = run(lambda conn: service.reopen(conn, store_id))
        click.echo(f"reopened {_line(opened)}")
