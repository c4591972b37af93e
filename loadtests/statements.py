"""Time the till's lookup statements on one idle connection, alternating, on a seeded database.

    uv run python loadtests/statements.py --data-dir /tmp/prefs-bench-20k
    uv run python loadtests/statements.py --tree before=../before   # a checkout's LOOKUP too

For batches of 1, 4 and 16 card lookups (cards drawn from the seeded customers, the seed's first
till key), sends LOOKUP and LOOKUP_CARDS (and each --tree's LOOKUP) in turn on one connection with
the lookup's settings, and prints the median wall time of each: what a statement costs the batch
on an idle machine (the database's work and one round trip), without HTTP or the access-log
insert. FLOOR takes the same parameters and does nothing: what any statement costs. When the
database runs on this machine, it also prints the server's CPU per statement, read from /proc
over blocks of each statement run in a row. Run it with nothing else busy. The database is the
embedded one under --data-dir, as loadtests/bench.py seeds it (run that first), or
PREFS_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import start_embedded

from prefs import db
from prefs.crypto import Vault, api_key_hash
from prefs.pos import service
from prefs.settings import load


def tree_lookup(directory: Path) -> str:
    """LOOKUP as the checkout at ``directory`` writes it."""
    program = "import prefs.pos.service as s, sys; sys.stdout.write(s.LOOKUP)"
    env = {**os.environ, "PYTHONPATH": str(directory / "src")}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


# A statement that takes LOOKUP_CARDS' parameters and does nothing with them: what any statement
# costs the database (the protocol, a transaction, a plan kept and run), for comparison.
FLOOR = """
SELECT r.i FROM unnest($1::int[], $2::bytea[]) AS r(i, key_hash)
WHERE $3::int[] IS NOT NULL AND $4::bytea[] IS NOT NULL AND $5::int + $6::int > 0
"""


def _backend_seconds(pid: int) -> float | None:
    """CPU seconds (user and system) the server process ``pid`` has used, when it runs on this
    machine (/proc): the kernel counts them in clock ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_cpu(
    conn: asyncpg.Connection, backend: int, sent_all: list[list[tuple[str, str, list[Any]]]]
) -> dict[str, float]:
    """The database server's CPU per execution of each statement, in µs: each statement is run
    for every batch in a row, its server process's CPU read before and after (a tick is 10 ms, so
    only long blocks are exact), in three rounds in turn. Empty when the server is elsewhere."""
    if _backend_seconds(backend) is None:
        return {}
    used: dict[str, float] = {}
    runs: dict[str, int] = {}
    for _ in range(3):
        names = [name for name, _, _ in sent_all[0]]
        random.shuffle(names)
        for name in names:
            before = _backend_seconds(backend)
            for sent in sent_all:
                statement, values = next((t, v) for n, t, v in sent if n == name)
                await conn.fetch(statement, *values)
            after = _backend_seconds(backend)
            assert before is not None and after is not None
            used[name] = used.get(name, 0.0) + after - before
            runs[name] = runs.get(name, 0) + len(sent_all)
    return {name: used[name] / runs[name] * 1e6 for name in used}


async def measure(url: str, data_dir: Path, trees: dict[str, str], repeats: int) -> None:
    seed = json.loads((data_dir / "seed.json").read_text())
    settings = load({"PREFS_DATA_DIR": str(data_dir)})
    vault = Vault.from_settings(settings.master_keys, settings.index_keys)
    key = api_key_hash(seed["tills"][0]["key"])
    run = seed["runs"][0]["run"]
    customers = seed["runs"][0]["customers"]
    limits = (1_000_000, 1_000_000)  # no lookup refused: each statement does its whole work
    conn = await asyncpg.connect(
        db.asyncpg_dsn(url), server_settings=service.LOOKUP_SERVER_SETTINGS
    )
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    try:
        for size in (1, 4, 16):
            times: dict[str, list[float]] = {}
            sent_all: list[list[tuple[str, str, list[Any]]]] = []
            for _ in range(repeats):
                cards = [
                    seed["card_format"].format(run=run, index=random.randrange(customers))
                    for _ in range(size)
                ]
                batch = [(key, vault.index.all_digests("card", c.encode()), ()) for c in cards]
                arguments = service._arguments(batch)
                sent: list[tuple[str, str, list[Any]]] = [
                    ("LOOKUP", service.LOOKUP, [*arguments, *limits]),
                    ("LOOKUP_CARDS", service.LOOKUP_CARDS, [*arguments[:4], *limits]),
                    ("FLOOR", FLOOR, [*arguments[:4], *limits]),
                    *((f"LOOKUP[{n}]", text, [*arguments, *limits]) for n, text in trees.items()),
                ]
                sent_all.append(sent)
                random.shuffle(sent)  # no statement always first after the client's own work
                for name, statement, values in sent:
                    started = time.perf_counter()
                    rows = await conn.fetch(statement, *values)
                    times.setdefault(name, []).append(time.perf_counter() - started)
                    assert name == "FLOOR" or len(rows) == size, (name, len(rows))
            warm = repeats // 6  # the first executions plan and warm the caches
            medians = {n: statistics.median(t[warm:]) * 1e6 for n, t in sorted(times.items())}
            print(
                f"{size:3} card lookups per batch: "
                + ", ".join(f"{n} {m:,.0f} µs" for n, m in medians.items())
            )
            cpu = await server_cpu(conn, backend, sent_all)
            if cpu:
                print(
                    f"{'':3} the database's CPU per statement: "
                    + ", ".join(f"{n} {c:,.0f} µs" for n, c in sorted(cpu.items()))
                )
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("PREFS_BENCH_DIR", "/tmp/prefs-bench")),  # noqa: S108
    )
    parser.add_argument("--repeats", type=int, default=600, help="batches of each size")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args()
    trees = {}
    for spec in args.tree:
        name, _, directory = spec.partition("=")
        trees[name] = tree_lookup(Path(directory).resolve())
    url = os.environ.get("PREFS_DATABASE_URL")
    embedded = None
    if not url:
        embedded, url = start_embedded(args.data_dir, 20)
    try:
        asyncio.run(measure(url, args.data_dir, trees, args.repeats))
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
