"""Releases side by side: the previous release's code taken from git, and `prefs serve` of either
release as a process of its own on one database (a rolling deploy, tests/test_rolling_deploy.py)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx
from packaging.requirements import Requirement

from tests.support.paths import repo_root
from tests.support.servers import free_port

ROOT = repo_root()
PREFS = Path(sys.executable).parent / "prefs"
MIGRATIONS = ROOT / "migrations" / "versions"
# The previous release's `prefs` command: its own package first on the path, this venv's libraries
RUN_PREFS = "import sys; from prefs.cli import main; sys.exit(main())"


class NoHistory(Exception):
    """The previous release cannot be read from git here (no checkout, or a shallow one)."""


@dataclass(frozen=True)
class Release:
    commit: str  # the commit before the newest migration arrived
    root: Path  # its src/ and migrations/, extracted
    head: str  # the newest migration it knows

    @property
    def serves_later_schemas(self) -> bool:
        """Whether its readiness and start-up take a later release's schema (db.schema_state):
        releases before that report "behind" on it and cannot restart."""
        return "def schema_state(" in (self.root / "src" / "prefs" / "db.py").read_text()

    @property
    def orders_feeds_by_position(self) -> bool:
        """Whether its partner feed and store queues hand out position cursors (revision 0015
        on), which this release reads; releases before hand out transaction-id cursors."""
        return (self.root / "src" / "prefs" / "feeds.py").exists()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=60
        )
    except FileNotFoundError:
        raise NoHistory("git is not installed") from None
    if done.returncode != 0:
        raise NoHistory(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


def newest_migration() -> Path:
    return max(MIGRATIONS.glob("[0-9]*.py"))


def previous_release_commit() -> str:
    """The commit before the newest migration file arrived (HEAD while it is not committed).

    Along first parents, a merge counting as adding what it brings: the commit before it is
    what ran before the migration (the branch's own parent may lack what the main line had)."""
    _git("rev-parse", "--git-dir")
    newest = str(newest_migration().relative_to(ROOT))
    added = _git("log", "--first-parent", "-m", "--diff-filter=A", "--format=%H", "--", newest)
    if not added:
        return _git("rev-parse", "HEAD")  # the migration is new in the work tree
    arrival = added.splitlines()[0]  # the latest arrival, if it was ever removed and re-added
    try:
        return _git("rev-parse", "--verify", f"{arrival}^1^{{commit}}")
    except NoHistory:
        if _git("rev-parse", "--is-shallow-repository") == "true":
            raise NoHistory(f"a shallow clone: the parent of {arrival[:12]} is not in it") from None
        raise


def extract(commit: str, into: Path) -> Release:
    """The release's src/ and migrations/ (its `prefs serve` migrates with its own scripts)."""
    archive = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "archive",
            "--format=tar",
            commit,
            "src",
            "migrations",
            "pyproject.toml",
        ],
        capture_output=True,
        timeout=120,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    head = max((into / "migrations" / "versions").glob("[0-9]*.py")).name.split("_")[0]
    return Release(commit=commit, root=into, head=head)


def unmet_dependencies(release: Release) -> list[str]:
    """The release's runtime requirements this venv does not satisfy."""
    project = tomllib.loads((release.root / "pyproject.toml").read_text())["project"]
    unmet = []
    for line in project["dependencies"]:
        requirement = Requirement(line)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{line} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{line} (installed: {installed})")
    return unmet


class Instance:
    """One `prefs serve` process (of either release) on a free port, its output in files."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / f"{name}.log"
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                [*command, "serve", "--port", str(self.port)],
                env=env,
                cwd=logs,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_live(self, timeout: float = 90) -> None:
        """Until /health/live answers (ready may say no: that is what the tests look at)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.output()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health/live", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start: {self.output()[-3000:]}")
            time.sleep(0.1)

    def exit_code(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def environment(database_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The caller's environment without PREFS_ settings, plus the shared database and keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFS_")}
    env.pop("PYTHONPATH", None)
    return {
        **env,
        "PREFS_DATABASE_URL": database_url,
        "PREFS_DATA_DIR": str(data_dir),
        "PREFS_LOG_LEVEL": "WARNING",
        "PREFS_CUSTOMER_REQUESTS_PER_MINUTE": "100000",
        **settings,
    }


def command(release: Release | None) -> tuple[list[str], dict[str, str]]:
    """How to run `prefs` of ``release`` (None: this one), and what its environment adds."""
    if release is None:
        return [str(PREFS)], {}
    return [sys.executable, "-c", RUN_PREFS], {"PYTHONPATH": str(release.root / "src")}


@contextlib.contextmanager
def serving(
    release: Release | None, name: str, env: dict[str, str], logs: Path
) -> Iterator[Instance]:
    """`prefs serve` of ``release`` (None: this one) until the block ends."""
    run, extra = command(release)
    instance = Instance(name, run, {**env, **extra}, logs)
    try:
        yield instance
    finally:
        instance.stop()


def run_prefs(release: Release | None, env: dict[str, str], *args: str) -> tuple[int, str]:
    """A `prefs` command of ``release`` (None: this one); (exit code, output)."""
    run, extra = command(release)
    done = subprocess.run(
        [*run, *args],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(env["PREFS_DATA_DIR"]).parent,
    )
    return done.returncode, done.stdout + done.stderr
