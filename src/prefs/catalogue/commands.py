"""`prefs catalogue …`: the retailer's catalogue from the command line."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import msgspec

from prefs.catalogue import service
from prefs.catalogue.schemas import ImportRow

CSV_COLUMNS = {"sku", "name", "brand", "category", "status", "attributes", "replaced_by"}
_row = msgspec.json.Decoder(ImportRow)
_convert_error = (msgspec.ValidationError, msgspec.DecodeError)


def _reason(error: Exception) -> str:
    return str(error).replace("Object", "product", 1)


def _not_text(values: Any) -> bool:
    """A line that was not UTF-8 (read with surrogate escapes, which only bad bytes produce)."""
    text = values if isinstance(values, str) else " ".join(str(v) for v in values if v)
    return any("\udc80" <= char <= "\udcff" for char in text)


def json_lines(stream: IO[str]) -> Iterator[tuple[int, ImportRow | str]]:
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        if _not_text(line):
            yield line_no, "not UTF-8 text"
            continue
        try:
            yield line_no, _row.decode(line)
        except _convert_error as error:
            yield line_no, _reason(error)


def csv_rows(stream: IO[str]) -> Iterator[tuple[int, ImportRow | str]]:
    reader = csv.DictReader(stream)
    header = set(reader.fieldnames or ())
    unknown = header - CSV_COLUMNS
    if unknown or not {"sku", "name", "status"} <= header:
        raise click.ClickException(
            f"the CSV header must name sku, name and status (and may name "
            f"{', '.join(sorted(CSV_COLUMNS - {'sku', 'name', 'status'}))})"
            + (f"; unknown columns: {', '.join(sorted(unknown))}" if unknown else "")
        )
    for record in reader:
        line_no = reader.line_num
        if _not_text(list(record.values())):
            yield line_no, "not UTF-8 text"
            continue
        if None in record:
            yield line_no, "more fields than the header names"
            continue
        product: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
        try:
            if "attributes" in product:
                product["attributes"] = msgspec.json.decode(product["attributes"])
            yield line_no, msgspec.convert(product, ImportRow)
        except _convert_error as error:
            yield line_no, _reason(error)


def read(path: Path, kind: str) -> Iterator[tuple[int, ImportRow | str]]:
    """The rows of an import file: CSV by its header, JSON lines otherwise."""
    raw = path.open("rb")
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
    if kind == "auto":
        kind = "csv" if path.suffix.lower() == ".csv" else "jsonl"
    with stream:
        yield from (csv_rows(stream) if kind == "csv" else json_lines(stream))


def _counting(rows: Iterator[tuple[int, Any]], bar: Any) -> Iterator[tuple[int, Any]]:
    for line, row in rows:
        bar.update(1)
        yield line, row


def register(main: click.Group, run: Any) -> None:
    """Add `prefs catalogue` to the command; ``run(action)`` runs an action on a connection (the
    database is all an import needs: no keys)."""

    @main.group()
    def catalogue() -> None:
        """The retailer's catalogue: products and whether they are discontinued."""

    @catalogue.command("import")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option(
        "--format",
        "kind",
        type=click.Choice(["auto", "jsonl", "csv"]),
        default="auto",
        show_default=True,
        help="auto: CSV for a .csv file, JSON lines otherwise",
    )
    def import_(file: Path, kind: str) -> None:
        """Add or update products from FILE (JSON lines or CSV with a header: sku, name, status,
        and optionally brand, category, attributes as a JSON object, replaced_by). Importing the
        same file again changes nothing; a bad line is named and skipped, never the rest.
        Needs only the database: the running service recounts anonymous demand for the SKUs
        whose status moved, within its PREFS_EXPIRY_INTERVAL."""
        report = service.ImportReport()
        show_bar = sys.stderr.isatty()

        async def action(conn: Any) -> service.ImportReport:
            with (
                click.progressbar(length=0, label="importing", file=sys.stderr, show_pos=True)
                if show_bar
                else _NoBar() as bar
            ):
                return await service.import_rows(
                    conn, None, _counting(read(file, kind), bar), report
                )

        run(action)
        click.echo(
            f"added {report.added}, changed {report.changed}, unchanged {report.unchanged}, "
            f"refused {len(report.refused)}"
        )
        if report.moved:
            click.echo(
                f"status set or changed for {report.moved} SKU{'s' * (report.moved != 1)}: "
                "the running service recounts anonymous demand for them within its "
                "PREFS_EXPIRY_INTERVAL (60 s by default)"
            )
        for line, reason in report.refused:
            click.echo(f"  line {line}: {reason}")
        if report.refused:
            sys.exit(1)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, _: int) -> None:
        return None
