"""``PriceRepository``: OHLCV bars, read by index and bulk-loaded through ``COPY``."""
from __future__ import annotations

import datetime as dt
import gc
import os
import threading
from contextlib import contextmanager
from decimal import Decimal
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import peewee

from .. import validation as check
from ..errors import DataValidationError, DuplicateKeyError
from ..models import Price
from ..repository import BaseRepository, reads
from ..validation import UTC
from ._copy import COPY_COLUMNS, CopySource
from ._csv import CsvBody, csv_header
from ._frames import frame_source
from ._rows import RowStream
from ._frames_out import build_frame, check_library, fetch_columns
from ._sql import BUCKET_ORIGIN, aware

MAX_SYMBOLS = 10_000  # latest_for_symbols: one array parameter
Progress = Callable[[int], None]


class PriceBar(NamedTuple):
    """One resampled OHLCV bar; ``bucket`` is the (aware UTC) start of its bucket."""

    bucket: dt.datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    count: int  # source bars in the bucket


_PRICE_FIELDS = Price._meta.sorted_fields
PRICE_ROW_COLUMNS = tuple(f.column_name for f in _PRICE_FIELDS)
"""Column order of the tuples ``get_range(..., as_tuples=True)`` returns: ``("id",) + PRICE_COLUMNS``."""
_PRICE_NAMES = tuple(f.name for f in _PRICE_FIELDS)
_PRICE_SELECT = ", ".join(f'"{c}"' for c in PRICE_ROW_COLUMNS)
_TIMESTAMP_AT = PRICE_ROW_COLUMNS.index("timestamp")
_SYMBOL_AT = PRICE_ROW_COLUMNS.index("symbol")


def _utc_rows(rows: list[tuple]) -> list[tuple]:
    """``rows`` (full price rows) with every timestamp aware UTC.

    Sessions run with ``timezone=UTC``, so psycopg2 already returns
    ``tzinfo is timezone.utc`` and ``rows`` comes back unchanged; only a caller
    who ran ``SET timezone`` in its session pays for a conversion.
    """
    at = _TIMESTAMP_AT
    if all(row[at].tzinfo is UTC for row in rows):
        return rows
    return [(*row[:at], aware(row[at]), *row[at + 1:]) for row in rows]


def _price_models(rows: list[tuple]) -> list[Price]:
    """``Price`` instances of full rows in ``PRICE_ROW_COLUMNS`` order.

    Built directly in the state ``Model.__init__`` leaves for a fetched row
    (``__data__`` holding the values, nothing dirty, no related objects):
    peewee's model cursor would build a dict per row through a converter per
    column, then set each field through its descriptor, 2-3x the cost of the
    fetch itself. Its converters are no-ops here: psycopg2 returns ``Decimal``
    for numeric and, via :func:`_utc_rows`, aware UTC datetimes. The instances
    are ordinary ones: attribute access, ``save()``, equality and repr work.
    """
    new, names, out = Price.__new__, _PRICE_NAMES, []
    append = out.append
    with _no_gc():
        for row in _utc_rows(rows):
            obj = new(Price)
            obj.__data__ = dict(zip(names, row))
            obj._dirty = set()
            obj.__rel__ = {}
            append(obj)
    return out


_gc_lock = threading.Lock()
_gc_paused = 0  # _no_gc blocks running, in any thread
_gc_resume = False  # whether the first of them found the collector enabled


@contextmanager
def _no_gc():
    """Pause the cyclic garbage collector while many long-lived objects are built.

    Each instance and its ``_dirty`` set are tracked containers that all
    survive, so the collector would run again and again over them (and over
    everything else the process holds) without freeing anything: measured
    here, a third of the time of building 100,000 models. Nothing built
    here forms a cycle. The collector is process-wide: it stays paused until
    the last block in any thread ends, then is enabled again only if it was
    when the first began (a ``gc.disable()`` made in between is undone).
    """
    global _gc_paused, _gc_resume
    with _gc_lock:
        if _gc_paused == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_paused += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_paused -= 1
            if _gc_paused == 0 and _gc_resume:
                gc.enable()


def _resample_sql(many: bool) -> str:
    """The SQL of :meth:`PriceRepository.resample`, also read by :meth:`~PriceRepository.frame`.

    Columns ``[symbol,] bucket, open, high, low, close, volume, bars``;
    parameters: width, origin, the symbol (``many``: a list of them), interval,
    start, end. ``many`` groups by symbol too, ordered by symbol then bucket.
    """
    by = "symbol, " if many else ""
    return (f'SELECT {by}date_bin(%s, "timestamp", %s) AS bucket, '
            '(array_agg(open ORDER BY "timestamp"))[1] AS open, max(high) AS high, min(low) AS low, '
            '(array_agg(close ORDER BY "timestamp" DESC))[1] AS close, sum(volume) AS volume, count(*) AS bars '
            f'FROM prices WHERE symbol {"= ANY(%s)" if many else "= %s"} AND "interval" = %s '
            f'AND "timestamp" >= %s AND "timestamp" < %s GROUP BY {by}bucket ORDER BY {by}bucket')


# upsert_many's staging table: the rules of prices (LIKE ... INCLUDING CONSTRAINTS, so a
# refused row names its line as copy_from's would) but no index and no WAL; dropped at the
# end of the call (ON COMMIT DROP too, in case the caller's transaction outlives an error).
STAGE = "marketstore_price_stage"
STAGE_CREATE = (
    f"CREATE TEMPORARY TABLE {STAGE} (LIKE prices INCLUDING DEFAULTS INCLUDING CONSTRAINTS) ON COMMIT DROP; "
    # id numbers the staged rows in input order (and takes nothing from prices' sequence)
    f"ALTER TABLE {STAGE} ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY; "
    "SELECT current_setting('work_mem'), set_config('work_mem', '256MB', true)"
)
# ON CONFLICT may touch a row once per statement: DISTINCT ON keeps the last
# staged row (highest id) of each key, as applying the rows in order would.
STAGE_MERGE = (
    f"INSERT INTO prices ({COPY_COLUMNS}) "
    f'SELECT DISTINCT ON (symbol, "interval", "timestamp") {COPY_COLUMNS} FROM {STAGE} '
    'ORDER BY symbol, "interval", "timestamp", id DESC '
    'ON CONFLICT (symbol, "interval", "timestamp") DO UPDATE SET '
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in ("open", "high", "low", "close", "volume"))
    + f"; DROP TABLE {STAGE}; SELECT set_config('work_mem', %s, true)"
)


class PriceRepository(BaseRepository[Price]):
    """OHLCV bars. Served by the unique (symbol, interval, timestamp) index."""

    model = Price

    @reads
    def get_range(self, symbol: str, start, end, interval: str = "1m", *,
                  as_tuples: bool = False) -> list[Price] | list[tuple]:
        """Bars of ``symbol``/``interval`` with ``start <= timestamp < end``, oldest first.

        Returns ``Price`` instances; with ``as_tuples=True``, plain tuples in
        :data:`PRICE_ROW_COLUMNS` order (``id, symbol, timestamp, open, high,
        low, close, volume, interval``; ``Decimal`` prices, aware UTC
        timestamps): the fast path for large reads, at the cost of the driver's
        own fetch. Raises ``DataValidationError`` for a bad parameter.
        """
        symbol, interval = check.symbol(symbol), check.interval(interval)
        start, end = check.span(start, end)
        check.flag("as_tuples", as_tuples)
        sql = (f'SELECT {_PRICE_SELECT} FROM prices WHERE symbol = %s AND "interval" = %s '
               'AND "timestamp" >= %s AND "timestamp" < %s ORDER BY "timestamp"')
        with self.session("get_range") as db:
            rows = db.execute_sql(sql, (symbol, interval, start, end)).fetchall()
        return _utc_rows(rows) if as_tuples else _price_models(rows)

    @reads
    def latest(self, symbol: str, interval: str = "1m") -> Price | None:
        """The newest bar of ``symbol``/``interval``, or ``None``."""
        symbol, interval = check.symbol(symbol), check.interval(interval)
        query = (Price.select().where(Price.symbol == symbol, Price.interval == interval)
                 .order_by(Price.timestamp.desc()).limit(1))
        with self.session("latest"):
            return query.first()

    @reads
    def latest_for_symbols(self, symbols: Iterable[str], interval: str = "1m") -> dict[str, Price]:
        """``{symbol: newest bar}`` for each of ``symbols`` that has a bar, in one statement.

        One index probe per symbol (``unnest`` + ``LATERAL ... LIMIT 1``), not a
        sort of the whole table as ``DISTINCT ON`` would need.
        """
        wanted, interval = check.symbol_list(symbols, max_symbols=MAX_SYMBOLS), check.interval(interval)
        if not wanted:
            return {}
        sql = (f'SELECT p.* FROM unnest(%s::text[]) AS s(symbol) '
               f'CROSS JOIN LATERAL (SELECT {_PRICE_SELECT} FROM prices '
               '  WHERE prices.symbol = s.symbol AND prices."interval" = %s '
               '  ORDER BY prices."timestamp" DESC LIMIT 1) AS p')
        with self.session("latest_for_symbols") as db:
            rows = db.execute_sql(sql, (wanted, interval)).fetchall()
        return dict(zip((row[_SYMBOL_AT] for row in rows), _price_models(rows)))

    def upsert_many(self, rows_or_csv_path, *, batch_size: int = 1000, interval: str = "1m",
                    progress: Progress | None = None, symbol: str | None = None) -> int:
        """Insert bars, or update open/high/low/close/volume where (symbol, interval, timestamp) exists.

        ``rows_or_csv_path`` is what :meth:`copy_from` takes -- rows, the
        path of a CSV file read by the same reader with the same verdicts, a
        frame or a Parquet file -- and ``interval``, ``progress`` and
        ``symbol`` mean the same. The input is streamed
        with ``COPY`` (rows ``batch_size`` per chunk) into a temporary staging
        table that holds the rules of ``prices``, so a bad row or line is
        refused as ``copy_from`` refuses it; then one ``INSERT ... SELECT ...
        ON CONFLICT DO UPDATE`` applies them all. A regular file (or a frame) is first
        tried as new bars, straight into ``prices`` at ``copy_from``'s speed;
        the first bar already stored (or repeated) undoes that attempt and the
        file is read again through the staging table (so a file whose first
        stored bar comes late costs up to twice, and leaves the attempt's rows
        for autovacuum). All or nothing. A key repeated in the input: the last
        one wins. Returns the number of input rows written. Raises
        ``DataValidationError`` (with ``field``, ``value`` and ``row``, or
        ``source`` and ``line``). Needs the ``TEMPORARY`` privilege on the
        database, which PostgreSQL grants to PUBLIC (``sql/roles.sql``).
        """
        batch_size = check.limit(batch_size, "batch_size")
        with self._source(rows_or_csv_path, interval, progress, batch_size, symbol) as source:
            if source is None:
                return 0
            with self.session("upsert_many") as db:
                if source.rereadable:
                    count, source = self._copy_new(db, source)
                    if source is None:
                        return count
                # work_mem: the DISTINCT ON sort of the staged rows stays in memory (restored after).
                work_mem = db.execute_sql(STAGE_CREATE).fetchone()[0]
                count = source.copy_into(db, STAGE)
                db.execute_sql(STAGE_MERGE, (work_mem,))
        return count

    @staticmethod
    def _copy_new(db, body: CopySource) -> tuple[int, CopySource | None]:
        """Try a file (or a frame) as new bars first: ``(rows, None)`` when all were, else ``(0, the file again)``.

        ``INSERT ... ON CONFLICT`` costs twice a plain insert and ``COPY``
        batches its writes, so a file of new bars loads at ``copy_from``'s
        speed. The first bar already stored (or repeated) undoes the attempt
        (a savepoint) and the file is read again through the staging table.
        """
        db.execute_sql("SAVEPOINT marketstore_upsert_new")
        try:
            count = body.copy_into(db, "prices")
        except DuplicateKeyError:  # any other error ends the whole call: the session rolls back
            db.execute_sql("ROLLBACK TO SAVEPOINT marketstore_upsert_new; RELEASE SAVEPOINT marketstore_upsert_new")
            return 0, body.rewound()
        db.execute_sql("RELEASE SAVEPOINT marketstore_upsert_new")
        return count, None

    def copy_from(self, rows_or_csv_path, *, interval: str = "1m", progress: Progress | None = None,
                  symbol: str | None = None) -> int:
        """Bulk-load new bars with PostgreSQL ``COPY``; returns the number of rows loaded.

        ``rows_or_csv_path`` is an iterable of rows (mappings, or sequences in
        :data:`PRICE_COLUMNS` order; not a query: read it first) holding
        ``int``, ``float``, ``Decimal``, numeric ``str`` or numpy numbers and
        ``datetime``, ``pandas.Timestamp``, ``numpy.datetime64`` or ISO text
        timestamps (naive = UTC), or the path of a UTF-8 CSV file (a FIFO
        such as ``/dev/stdin`` works too). Rows are held to the table's
        constraints by the server, and a refused row is validated again to
        name it exactly as ``Price.validate`` does. Either way the data is streamed, so
        a file of any size is never held in memory. Insert-only: a bar that
        already exists, or comes twice, is a :class:`DuplicateKeyError` naming
        its ``row``, or ``source`` and ``line`` (use :meth:`upsert_many` to
        update). All or nothing: a bad row aborts the whole load with a
        ``DataValidationError`` whose ``field`` and ``value`` name the bad
        value and whose ``row``, or ``source`` and ``line`` (the header being
        line 1), say where it is; ``field`` is ``'row'`` for a row or line of
        the wrong shape and ``'header'`` for a header that cannot be read. A
        file that cannot be read is a ``DataValidationError`` with
        ``field='path'``.

        A CSV file's header names the columns (any order, ``interval``
        optional); its body goes to the server untouched, which parses it and
        holds every row to the table's constraints -- the same rules as
        validation. Timestamps are ISO 8601 only (naive ones are UTC), numbers
        keep at most 8 decimals (more are rounded). An empty line is skipped;
        an empty ``interval`` cell takes ``interval``, as a file without the
        column does; a line of separators only is refused (its cells are empty).

        ``interval`` is the interval of rows (or a file) that give none;
        ``progress``, if given, is called with the number of bytes of the
        file read since its last call (for a progress bar).

        Frames (the ``frames`` extra): a pandas or polars DataFrame or a
        pyarrow Table, its columns by name (the timestamp may be the index,
        and ``symbol=`` names the symbol of a frame without that column), or
        the path of a ``.parquet`` file (read one record batch at a time).
        Checked column by column, vectorised; errors name the ``row``
        (1-based position in the frame or file). See :mod:`._frames`.
        """
        with self._source(rows_or_csv_path, interval, progress, symbol=symbol) as source:
            if source is None:
                return 0
            with self.session("copy_from") as db:
                return source.copy_into(db, "prices")

    @staticmethod
    @contextmanager
    def _source(rows_or_csv_path, interval: str, progress: Progress | None,
                rows_per_read: int = 2000, symbol: str | None = None) -> Iterator[CopySource | None]:
        """``rows_or_csv_path`` as a COPY source (``None``: an empty file, no rows).

        A ``str`` or path-like is a CSV file (a Parquet file if it ends in
        ``.parquet``), opened (and its header read) here, before any
        transaction: a missing file starts none.
        """
        interval = check.interval(interval)
        if progress is not None and not callable(progress):
            raise DataValidationError("progress", progress, "a callable taking a byte count, or None")
        frame = frame_source(rows_or_csv_path, interval, symbol, progress)
        if frame is not None:
            yield frame
            return
        if isinstance(rows_or_csv_path, (peewee.BaseQuery, peewee.ModelBase)):
            # Iterating a query runs it: before the session there is no connection, and
            # inside it the connection is busy with the COPY.
            raise DataValidationError("rows_or_csv_path", rows_or_csv_path,
                                      "rows, not a query: read it first (list(query)), or use bulk_create")
        if not isinstance(rows_or_csv_path, (str, os.PathLike)):
            if not isinstance(rows_or_csv_path, Iterable) or isinstance(rows_or_csv_path, (bytes, Mapping)):
                raise DataValidationError("rows_or_csv_path", rows_or_csv_path, "an iterable of rows or a CSV path")
            yield RowStream(rows_or_csv_path, interval, rows_per_read)
            return
        path = os.fspath(rows_or_csv_path)
        path = check.text("rows_or_csv_path", os.fsdecode(path) if isinstance(path, bytes) else path, 4096)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise check.unreadable(path, exc) from exc
        with handle:
            try:
                found = csv_header(handle, path)
            except OSError as exc:
                raise check.unreadable(path, exc) from exc
            if found is not None and progress is not None:
                progress(found[1])
            yield None if found is None else CsvBody(handle, path, found[0], interval, progress)

    @reads
    def resample(self, symbol: str, start, end, bucket="1 hour", *, interval: str = "1m") -> list[PriceBar]:
        """OHLCV bars of width ``bucket`` built in SQL from the ``interval`` bars in ``[start, end)``.

        Per bucket: first open, max high, min low, last close, summed volume
        and the number of source bars; oldest first, empty buckets omitted.
        """
        symbol, interval = check.symbol(symbol), check.interval(interval)
        start, end = check.span(start, end)
        width = check.bucket(bucket)
        with self.session("resample") as db:
            rows = db.execute_sql(_resample_sql(False), (width, BUCKET_ORIGIN, symbol, interval, start, end)).fetchall()
        return [PriceBar(aware(b), o, h, lo, c, v, n) for b, o, h, lo, c, v, n in rows]

    @reads
    def frame(self, symbols, start, end, *, interval: str = "1m", bucket=None, library: str = "pandas"):
        """Bars in ``[start, end)`` as a frame (the ``frames`` extra), oldest first.

        ``symbols`` is one symbol (a ``str``) or a list. pandas (the default):
        indexed by a UTC ``DatetimeIndex`` named ``timestamp`` -- by
        (``symbol``, ``timestamp``) for a list, ordered by symbol then time --
        with float64 columns ``open high low close volume``. ``bucket`` (as
        for :meth:`resample`, whose SQL it runs) resamples on the server and
        adds the int64 column ``bars`` (source bars per bucket), labelled by
        the bucket's start. ``library="polars"`` or ``"arrow"`` returns a
        polars DataFrame or a pyarrow Table, with ``timestamp`` (and
        ``symbol``) as leading columns. Read with binary ``COPY`` (see
        :mod:`._frames_out`). Raises ``DataValidationError`` for a bad
        parameter, ``MissingExtraError`` without the extra.
        """
        many = not isinstance(symbols, str)
        wanted = check.symbol_list(symbols, max_symbols=MAX_SYMBOLS) if many else [check.symbol(symbols)]
        interval, (start, end) = check.interval(interval), check.span(start, end)
        kind, width = check_library(library), None if bucket is None else check.bucket(bucket)
        numbers = ("open", "high", "low", "close", "volume") + (("bars",) if width is not None else ())
        columns = [("symbol", "int4")] if many else []
        columns += [("timestamp", "timestamptz")] + [(n, "int8" if n == "bars" else "float8") for n in numbers]
        position = "array_position(%s::text[], symbol)::int4, " if many else ""
        casts = ", ".join(f"{n}::{t}" for n, t in columns[len(columns) - len(numbers):])
        order = "symbol, " if many else ""
        if width is None:
            sql = (f'SELECT {position}"timestamp", {casts} FROM prices WHERE symbol {"= ANY(%s)" if many else "= %s"} '
                   f'AND "interval" = %s AND "timestamp" >= %s AND "timestamp" < %s ORDER BY {order}"timestamp"')
            params = [wanted if many else wanted[0], interval, start, end]
        else:
            sql = f"SELECT {position}bucket, {casts} FROM ({_resample_sql(many)}) AS r ORDER BY {order}bucket"
            params = [width, BUCKET_ORIGIN, wanted if many else wanted[0], interval, start, end]
        with self.session("frame") as db:
            values = fetch_columns(db, sql, ([wanted] if many else []) + params, columns)
        return build_frame(values, None, wanted if many else None, kind)

    @reads
    def symbols(self, *, limit: int = check.MAX_PAGE, after: str | None = None) -> list[str]:
        """The first ``limit`` symbols that have bars, sorted; after ``after`` (the last of a page) when given.

        A loose index scan (one probe of the unique index per distinct
        symbol), instead of reading every row as ``SELECT DISTINCT`` would.
        """
        limit = check.limit(limit)
        after = None if after is None else check.symbol(after, "after")
        sql = ("WITH RECURSIVE s(symbol, n) AS ("
               "  (SELECT symbol, 1 FROM prices WHERE %s::text IS NULL OR symbol > %s ORDER BY symbol LIMIT 1)"
               "  UNION ALL"
               "  SELECT (SELECT p.symbol FROM prices p WHERE p.symbol > s.symbol ORDER BY p.symbol LIMIT 1), n + 1"
               "  FROM s WHERE s.symbol IS NOT NULL AND n < %s"
               ") SELECT symbol FROM s WHERE symbol IS NOT NULL")
        with self.session("symbols") as db:
            return [symbol for (symbol,) in db.execute_sql(sql, (after, after, limit)).fetchall()]

    def delete_before(self, ts) -> int:
        """Delete every bar (all symbols and intervals) with ``timestamp < ts``; returns the count.

        Retention is a sweep over the whole table, so this is a sequential scan
        by design: SPEC gives prices no timestamp index (it would slow ingest).
        """
        ts = check.timestamp("ts", ts)
        with self.session("delete_before"):
            return Price.delete().where(Price.timestamp < ts).execute()
