"""``PriceRepository``: OHLCV bars, read by index and bulk-loaded through ``COPY``."""
from __future__ import annotations

import datetime as dt
import os
from contextlib import contextmanager
from decimal import Decimal
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

import peewee

from .. import validation as check
from ..errors import DataValidationError
from ..intervals import optional_interval, parse, step_sql, zone
from ..models import Price
from ..repository import BaseRepository, reads
from ._copy import CopySource
from ._csv import CsvBody, csv_header
from ._frames import frame_source
from ._load import UpsertCount, copy_new, upsert
from ._rows import RowStream
from ._frames_out import FILLS, build_frame, check_library, fetch_columns, frame_query
from ._price_rows import PRICE_ROW_COLUMNS, PRICE_SELECT, SYMBOL_AT, price_models, utc_rows
from ._price_sql import INTERVAL_PROBE, SERIES, STORED_INTERVALS, buckets, in_range
from ._sql import aware

MAX_SYMBOLS = 10_000  # latest_for_symbols: one array parameter
INTERVAL_AT = PRICE_ROW_COLUMNS.index("interval")
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


class PriceSeries(NamedTuple):
    """A stored series: ``symbol``'s bars of ``interval``, the first and last bar's start (aware UTC)."""

    symbol: str
    interval: str
    first: dt.datetime
    last: dt.datetime


class PriceRepository(BaseRepository[Price]):
    """OHLCV bars. Served by the unique (symbol, interval, timestamp) index."""

    model = Price

    def _intervals(self, db, wanted: list[str], interval: str | None) -> dict[str, str]:
        """``{symbol: the interval to read}``: the one given, else each symbol's one stored interval.

        A symbol without bars is left out; one with several is refused
        (``field='interval'``, naming them). Two index probes per symbol.
        """
        if interval is not None:
            return dict.fromkeys(wanted, interval)
        found = {}
        for symbol, first, second in db.execute_sql(INTERVAL_PROBE, (wanted,)).fetchall():
            if second is not None:
                stored = [iv for (iv,) in db.execute_sql(STORED_INTERVALS, (symbol, symbol)).fetchall()]
                raise DataValidationError("interval", None, f"one of the intervals stored for {symbol}: "
                                                            f"{', '.join(stored)} (it has bars of several)")
            found[symbol] = first
        return found

    @reads
    def get_range(self, symbol: str, start=None, end=None, interval: str | None = None, *,
                  as_tuples: bool = False) -> list[Price] | list[tuple]:
        """Bars of ``symbol`` with ``start <= timestamp < end``, oldest first.

        ``start``/``end``: datetimes (naive = UTC), ``date`` (midnight UTC) or
        ``None`` (unbounded). ``interval=None`` reads the symbol's one stored
        interval (several: ``DataValidationError``, ``field='interval'``).
        Returns ``Price`` instances; with ``as_tuples=True``, plain tuples in
        :data:`PRICE_ROW_COLUMNS` order (``Decimal`` prices, aware UTC
        timestamps): the fast path for large reads.
        """
        symbol, interval = check.symbol(symbol), optional_interval(interval)
        start, end = check.span(start, end)
        check.flag("as_tuples", as_tuples)
        where, params = in_range(start, end)
        sql = f'SELECT {PRICE_SELECT} FROM prices WHERE symbol = %s AND "interval" = %s{where} ORDER BY "timestamp"'
        with self.session("get_range") as db:
            found = self._intervals(db, [symbol], interval)
            rows = db.execute_sql(sql, [symbol, found[symbol]] + params).fetchall() if found else []
        return utc_rows(rows) if as_tuples else price_models(rows)

    @reads
    def latest(self, symbol: str, interval: str | None = None) -> Price | None:
        """The newest bar of ``symbol`` (of ``interval``; ``None``: its one stored interval), or ``None``."""
        return self.latest_for_symbols([check.symbol(symbol)], interval).get(symbol)

    @reads
    def latest_for_symbols(self, symbols: Iterable[str], interval: str | None = None) -> dict[str, Price]:
        """``{symbol: newest bar}`` for each of ``symbols`` that has a bar, in one statement.

        One index probe per symbol (``unnest`` + ``LATERAL ... LIMIT 1``), not a
        sort of the whole table as ``DISTINCT ON`` would need; with
        ``interval=None`` two more find each symbol's one stored interval.
        """
        wanted, interval = check.symbol_list(symbols, max_symbols=MAX_SYMBOLS), optional_interval(interval)
        if not wanted:
            return {}
        if interval is None:
            # One probe: the newest bar of the symbol's greatest interval; a second: its smallest interval
            # (another one: the symbol has several, refused). Two index probes where a given interval takes one.
            sql = (f'SELECT p.*, (SELECT o."interval" FROM prices AS o WHERE o.symbol = p.symbol '
                   'ORDER BY o."interval" LIMIT 1) FROM unnest(%s::text[]) AS s(symbol) '
                   f'CROSS JOIN LATERAL (SELECT {PRICE_SELECT} FROM prices WHERE prices.symbol = s.symbol '
                   'ORDER BY prices."interval" DESC, prices."timestamp" DESC LIMIT 1) AS p')
            params = (wanted,)
        else:
            sql = (f'SELECT p.* FROM unnest(%s::text[]) AS s(symbol) '
                   f'CROSS JOIN LATERAL (SELECT {PRICE_SELECT} FROM prices '
                   '  WHERE prices.symbol = s.symbol AND prices."interval" = %s '
                   '  ORDER BY prices."timestamp" DESC LIMIT 1) AS p')
            params = (wanted, interval)
        with self.session("latest_for_symbols") as db:
            rows = db.execute_sql(sql, params).fetchall()
            if interval is None:
                several = [row[SYMBOL_AT] for row in rows if row[-1] != row[INTERVAL_AT]]
                if several:
                    self._intervals(db, several[:1], None)  # raises, naming the stored intervals
        # price_models reads the row's leading columns: the smallest interval after them is left alone
        return dict(zip((row[SYMBOL_AT] for row in rows), price_models(rows)))

    @reads
    def series(self, symbols: Iterable[str] | None = None) -> list[PriceSeries]:
        """What is stored: a :class:`PriceSeries` per (symbol, interval), sorted; of ``symbols`` when given.

        A loose index scan (a probe per series, two more for its first and last
        bar), never a scan of the bars.
        """
        wanted = None if symbols is None else check.symbol_list(symbols, max_symbols=MAX_SYMBOLS)
        if wanted == []:
            return []
        first, nxt = ("symbol = ANY(%s)", "symbol = ANY(%s)") if wanted is not None else ("TRUE", "TRUE")
        sql = SERIES.format(first=first, next=nxt)
        with self.session("series") as db:
            rows = db.execute_sql(sql, [wanted, wanted] if wanted is not None else []).fetchall()
        return [PriceSeries(symbol, iv, aware(a), aware(b)) for symbol, iv, a, b in rows]

    def upsert_many(self, rows_or_csv_path, *, batch_size: int = 1000, interval: str | None = None,
                    progress: Progress | None = None, symbol: str | None = None) -> int:
        """Insert new bars and update the stored bars whose values changed; returns how many were written.

        Takes what :meth:`copy_from` takes, read the same way with the same
        verdicts (``batch_size`` rows per read). A key repeated in the input:
        the last one wins. A bar given exactly as stored is not written again.
        The count is an :class:`UpsertCount` (an ``int``: inserted + updated)
        whose ``inserted``, ``updated`` and ``unchanged`` attributes tell them
        apart. All or nothing. Needs the ``TEMPORARY`` privilege, which
        PostgreSQL grants to PUBLIC: the input is staged in a temporary table.
        """
        batch_size = check.limit(batch_size, "batch_size")
        with self._source(rows_or_csv_path, interval, progress, batch_size, symbol) as (source, interval):
            if source is None:
                return UpsertCount(0, 0, 0)
            with self.session("upsert_many") as db:
                return upsert(db, source, interval)

    def copy_from(self, rows_or_csv_path, *, interval: str | None = None, progress: Progress | None = None,
                  symbol: str | None = None) -> int:
        """Bulk-load new bars with PostgreSQL ``COPY``; returns the number of rows loaded.

        **Input.** An iterable of rows (mappings, or sequences in
        :data:`PRICE_COLUMNS` order; not a query: read it first) holding
        ``int``, ``float``, ``Decimal``, numeric ``str`` or numpy numbers and
        ``datetime``, ``pandas.Timestamp``, ``numpy.datetime64`` or ISO text
        timestamps (naive = UTC); the path of a UTF-8 CSV file (a FIFO such as
        ``/dev/stdin`` too); a pandas or polars DataFrame, a pyarrow Table or a
        ``.parquet`` path (the ``frames`` extra). Everything is streamed:
        memory stays bounded whatever the size.

        **CSV.** The header names the columns in any order and any case
        (``Adj Close`` is ``adj_close``; ``interval`` and ``adj_close``
        optional, ``symbol`` too with ``symbol=``). Timestamps are ISO 8601
        only (naive ones are UTC). An empty line is skipped; an empty
        ``interval`` cell takes ``interval=`` (without it, it is refused); a
        line of separators only is refused.

        **Frames.** Columns by name in any case (``Open``, ``Adj Close``); the
        timestamp may be a datetime index of any name, or a first column
        ``Date``/``Datetime`` (a ``reset_index()`` frame, pandas' CSV); a
        yfinance ``download()`` frame of one ticker (``(Price, Ticker)``
        columns) names its symbol; ``symbol=`` names the symbol of a frame
        without that column; a ``date`` is midnight UTC; NaN in ``adj_close``
        means none. A column the table does not keep (``Dividends``) is
        refused by name.

        **Interval.** ``interval=`` gives the rows without one their interval,
        and is refused (``field='interval'``) when bars are closer together
        than one bar of it. Without it, each symbol's interval is inferred
        from the smallest gap between its bars (see
        :func:`~marketstore.intervals.inferred`: ``5m``, ``1h``, ``1d``,
        ``1w``, ``1mo``, ``1y``; a lone bar ``1m``).

        **Verdicts.** Rows are held to the table's rules (``Price.Meta.rules``)
        -- by the server's CHECK constraints, frames also vectorised -- and a
        refused row is validated again so the error is validation's own:
        ``DataValidationError`` with ``field``, ``value`` and ``row`` (1-based),
        or ``source`` and ``line`` (the header is line 1); ``field`` is
        ``'row'`` for a row of the wrong shape, ``'header'`` for an unreadable
        header, ``'path'`` for a file that cannot be read. Numbers keep 8
        decimals, rounded half away from zero. Insert-only: a bar already
        stored, or given twice, is a :class:`DuplicateKeyError` naming where.
        All or nothing, in the caller's session when one is open.

        ``progress``, if given, is called with the bytes of a file read since
        its last call (for a progress bar).
        """
        with self._source(rows_or_csv_path, interval, progress, symbol=symbol) as (source, interval):
            if source is None:
                return 0
            with self.session("copy_from") as db:
                return copy_new(db, source, interval)

    @staticmethod
    @contextmanager
    def _source(rows_or_csv_path, interval: str | None, progress: Progress | None,
                rows_per_read: int = 2000, symbol: str | None = None) -> Iterator[tuple[CopySource | None, str | None]]:
        """``(rows_or_csv_path as a COPY source, the interval given)``; the source is ``None`` for an empty file.

        A ``str`` or path-like is a CSV file (a Parquet file if it ends in
        ``.parquet``), opened (and its header read) here, before any
        transaction: a missing file starts none.
        """
        interval = optional_interval(interval)
        if progress is not None and not callable(progress):
            raise DataValidationError("progress", progress, "a callable taking a byte count, or None")
        frame = frame_source(rows_or_csv_path, interval, symbol, progress)
        if frame is not None:
            yield frame, interval
            return
        if isinstance(rows_or_csv_path, (peewee.BaseQuery, peewee.ModelBase)):
            # Iterating a query runs it: before the session there is no connection, and
            # inside it the connection is busy with the COPY.
            raise DataValidationError("rows_or_csv_path", rows_or_csv_path,
                                      "rows, not a query: read it first (list(query)), or use bulk_create")
        if not isinstance(rows_or_csv_path, (str, os.PathLike)):
            if not isinstance(rows_or_csv_path, Iterable) or isinstance(rows_or_csv_path, (bytes, Mapping)):
                raise DataValidationError("rows_or_csv_path", rows_or_csv_path, "an iterable of rows or a CSV path")
            if symbol is not None:
                raise DataValidationError("symbol", symbol, "symbol= only with a file or a frame (rows name theirs)")
            yield RowStream(rows_or_csv_path, interval, rows_per_read), interval
            return
        path = os.fspath(rows_or_csv_path)
        path = check.text("rows_or_csv_path", os.fsdecode(path) if isinstance(path, bytes) else path, 4096)
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise check.unreadable(path, exc) from exc
        with handle:
            try:
                found = csv_header(handle, path, symbol)
            except OSError as exc:
                raise check.unreadable(path, exc) from exc
            if found is not None and progress is not None:
                progress(found[1])
            yield (None if found is None else CsvBody(handle, path, found[0], interval, progress, symbol)), interval

    @reads
    def resample(self, symbol: str, start=None, end=None, bucket="1 hour", *, interval: str | None = None,
                  tz: str | None = None) -> list[PriceBar]:
        """OHLCV bars of width ``bucket`` built in SQL from the bars in ``[start, end)``.

        Per bucket: first open, max high, min low, last close, summed volume
        and the number of source bars; oldest first, empty buckets omitted.
        ``bucket`` is a count and a unit (``15m``, ``1h``, ``1d``, ``1w``,
        ``1mo``, ``1y``; :mod:`marketstore.intervals`); ``tz`` (an IANA zone)
        aligns buckets on that zone's calendar -- a ``1d`` bucket is a local
        day, 23 or 25 hours across DST, a ``1w`` one starts on Monday -- and
        labels them by their start in that zone (``None``: UTC). A ``date``
        bound is midnight in ``tz``. ``interval`` as for :meth:`get_range`.
        """
        symbol, interval, frame = check.symbol(symbol), optional_interval(interval), parse(bucket, "bucket")
        zone(tz)
        start, end = check.span(start, end, tz)
        with self.session("resample") as db:
            found = self._intervals(db, [symbol], interval)
            if not found:
                return []
            sql, params = buckets(frame, tz, start, end, [[symbol], [found[symbol]]])
            rows = db.execute_sql(sql, params).fetchall()
        place = zone(tz)
        return [PriceBar(b.astimezone(place), o, h, lo, c, v, n) for _, b, o, h, lo, c, v, n in rows]

    @reads
    def frame(self, symbols, start=None, end=None, *, interval: str | None = None, bucket=None,
              tz: str | None = None, fill: str | None = None, sentiment=None, library: str = "pandas"):
        """Bars in ``[start, end)`` as a frame (the ``frames`` extra), oldest first.

        ``symbols`` is one symbol (a ``str``) or a list. pandas (the default):
        indexed by a ``DatetimeIndex`` named ``timestamp`` (UTC, or ``tz``) --
        by (``symbol``, ``timestamp``) for a list -- with float64 columns
        ``open high low close volume`` and ``adj_close`` when any bar read has
        one (NaN where absent). ``bucket`` and ``tz`` resample on the server as
        :meth:`resample` does, adding the int64 column ``bars``; ``fill``
        gives every bucket of ``[start, end)`` (both needed): ``"nan"`` leaves
        an empty bucket's prices NaN, ``"locf"`` carries the previous close
        into them; volume and bars 0. ``sentiment=True`` or a
        :class:`SentimentWindow` adds point-in-time sentiment to each bar:
        float64 ``sentiment_mean`` (NaN when none), int64 ``sentiment_count``,
        float64 ``sentiment_last`` (NaN when none) of the scores known within
        ``window`` before the bar's close, never at or after it (computed in
        the same statement). ``library="polars"``/``"arrow"``: ``timestamp``
        (and ``symbol``) as leading columns. Raises ``DataValidationError``
        for a bad parameter, ``MissingExtraError`` without the extra.
        """
        many = not isinstance(symbols, str)
        wanted = check.symbol_list(symbols, max_symbols=MAX_SYMBOLS) if many else [check.symbol(symbols)]
        interval, kind = optional_interval(interval), check_library(library)
        frame = None if bucket is None else parse(bucket, "bucket")
        zone(tz)
        start, end = check.span(start, end, tz)
        fill = None if fill is None else check.choice("fill", fill, FILLS)
        if fill is not None and (frame is None or start is None or end is None):
            raise DataValidationError("fill", fill, "a bucket, a start and an end: the grid of buckets to fill")
        from ._sentiment_join import sentiment_window, wrapper

        join = sentiment_window(sentiment)
        with self.session("frame") as db:
            found = self._intervals(db, wanted, interval)
            present = [s for s in wanted if s in found]
            pairs = [present, [found[s] for s in present]]
            frames = [parse(found[s], "interval") for s in present]
            widths = [step_sql(width, literal=False) for width in frames]
            longest = max((f.longest for f in ([frame] if frame is not None else frames)), default=dt.timedelta(0))
            wrap = None if join is None else wrapper(join, present, start, end, longest)
            sql, params, columns = frame_query(frame, tz, start, end, pairs, fill, widths, wrap)
            values = fetch_columns(db, sql, params, columns)
        return build_frame(values, present if many else None, kind, tz)

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
