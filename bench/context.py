"""The bench's database and the state shared by the cases (data sets, handles, table state)."""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import psycopg2.errors

import marketstore

from . import data, references

logger = logging.getLogger(__name__)


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (host, port and query parameters kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.contextmanager
def dedicated_database(server_url: str, keep: bool = False):
    """Create ``bench_<random>`` on the server, migrate it, yield its URL, drop it after."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        admin.close()
    url = with_database(server_url, name)
    try:
        marketstore.run_migrations(url)
        yield url
    finally:
        if keep:
            logger.warning("kept database %s", name)
        else:
            admin = psycopg2.connect(server_url)
            admin.autocommit = True
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


class Context:
    """Everything the cases share: the migrated database, data sets, open handles.

    Data sets are generated once (seeded) and kept, so generating rows is never
    part of a timing. ``table`` records what ``prices`` holds now, so a case
    reloads it only when another case changed it.
    """

    def __init__(self, url: str, rows: int, repeat: int, large: bool = False,
                 workdir: str | None = None, log=print, quick: bool = False):
        self.url = url
        self.n = rows
        self.repeat = repeat
        self.large = large
        # quick (the smoke test): one operation per sample and fewer session
        # transactions; every check still runs.
        self.quick = quick
        self.log = log
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="marketstore-bench-")
        self.workdir = Path(workdir or self._tmp.name)
        self.admin = references.connect(url)
        self.admin.autocommit = True
        self.raw = references.connect(url)  # the references' own connection
        self.table: str | None = None
        self._cache: dict = {}
        self._engine = None
        self._can_checkpoint = True
        self.closers: list = []  # pools and the like a case opened, closed with the context
        marketstore.initialize_database(url)

    # -- data sets (cached) ---------------------------------------------------
    def dataset(self, name: str, factory):
        if name not in self._cache:
            self._cache[name] = factory()
        return self._cache[name]

    @property
    def rows(self) -> list[dict]:
        return self.dataset("rows", lambda: data.rows(self.n))

    @property
    def read_rows(self) -> list[dict]:
        return self.dataset("read_rows", lambda: self.rows + data.tail_rows(self.n))

    def csv_file(self, n: int) -> tuple[Path, data.Summary]:
        """A CSV of the n-row data set (the ingest rows when n == N), written once."""
        def write():
            path = self.workdir / f"prices_{n}.csv"
            source = self.rows if n == self.n else data.iter_rows(data.counts(n))
            return path, data.write_csv(source, path)
        return self.dataset(("csv", n), write)

    @property
    def engine(self):
        if self._engine is None:
            from . import sqla

            self._engine = sqla.engine(self.url)
        return self._engine

    # -- table state ----------------------------------------------------------
    def reset(self) -> None:
        """Empty ``prices`` and checkpoint, so every load starts from the same state."""
        with self.admin.cursor() as cur:
            cur.execute("TRUNCATE prices RESTART IDENTITY")
        self.table = None
        self.checkpoint()

    def checkpoint(self) -> None:
        """Flush dirty buffers now, so no load pays for an earlier one's checkpoint."""
        if self._can_checkpoint and not self.quick:
            with self.admin.cursor() as cur:
                try:
                    cur.execute("CHECKPOINT")
                except psycopg2.errors.InsufficientPrivilege:
                    self._can_checkpoint = False

    def load(self, name: str, rows) -> None:
        """Make ``prices`` hold exactly ``rows`` (raw COPY, then VACUUM ANALYZE)."""
        if self.table == name:
            return
        self.reset()
        references.copy_rows(self.raw, rows)
        with self.admin.cursor() as cur:
            cur.execute("VACUUM ANALYZE prices")
        self.table = name

    def load_read_dataset(self) -> None:
        self.load("read", self.read_rows)

    def summary(self) -> data.Summary:
        with self.admin.cursor() as cur:
            cur.execute(data.SUMMARY_SQL)
            return data.Summary(*cur.fetchone())

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        marketstore.close_database()
        if self._engine is not None:
            self._engine.dispose()
        self.raw.close()
        self.admin.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def minutes_after_start(count: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end] around the first ``count`` bars of a symbol, half a minute outside
    them, so an inclusive and an exclusive end both select exactly ``count`` rows."""
    half = dt.timedelta(seconds=30)
    return data.T0 - half, data.T0 + (count - 1) * data.MINUTE + half
