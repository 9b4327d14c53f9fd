"""The news aggregate: ``ArticleRepository``, ``SentimentScoreRepository``, ``EventRepository``.

Queries take ``as_of`` (point in time): only rows whose article was ingested at
or before ``as_of`` are visible; an event without an article is visible when
its own ``timestamp`` is at or before ``as_of``. ``since`` is inclusive; time
ranges are half-open, ``start <= t < end``; buckets are ``date_bin`` buckets
aligned to Monday 2000-01-03 00:00 UTC, labelled by their start, empty ones
omitted.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable, NamedTuple

from peewee import JOIN

from .. import validation as check
from ..rules import TAG_LENGTH  # an article's symbols are tags of a text[] column
from ..errors import DataValidationError, NotFoundError
from ..models import Article, Event, SentimentScore
from ..repository import BaseRepository, reads, statements
from ..intervals import bucket_sql, parse, zone
from ._frame_chunks import need
from ._frames_out import build_frame, check_library, fetch_columns
from ._price_sql import in_range
from ._sql import BUCKET_ORIGIN, MAX_QUERY_TEXT, aware, contains, visible_to, where

# Everything but the generated search vector: large, and of no use to callers.
_ARTICLE_FIELDS = [f for f in Article._meta.sorted_fields if f is not Article.search_vector]
_ARTICLE_COLUMNS = ", ".join(f'a."{f.column_name}"' for f in _ARTICLE_FIELDS)

# What a loaded article may say; the database sets the rest. A loader must not choose
# when we learnt of an article: point-in-time queries depend on ingested_at.
ARTICLE_INPUT_FIELDS = ("title", "content", "source", "url", "published_at", "symbols", "metadata")
"""The fields :meth:`ArticleRepository.copy_from` takes from a row or a JSON Lines object."""
_SET_BY_DATABASE = {"id": "assigned by the database", "ingested_at": "set by the database on insert"}
_INPUT = [Article._meta.fields[name] for name in ARTICLE_INPUT_FIELDS]
_DEFAULTS = {f.name: f.default() if callable(f.default) else f.default for f in _INPUT}

Progress = Callable[[int], None]


def _article_row(data, expected: str, where: dict) -> tuple:
    """``data`` validated as an article, as a tuple in ``_INPUT`` order (defaults filled in)."""
    if not isinstance(data, Mapping):
        raise DataValidationError("row", data, expected, **where)
    for name, why in _SET_BY_DATABASE.items():
        if name in data:
            raise DataValidationError(name, data[name], f"no {name}: it is {why}", **where)
    for name in data:
        if name not in _DEFAULTS:
            raise DataValidationError(name, data[name], f"a known field ({', '.join(ARTICLE_INPUT_FIELDS)})",
                                      **where)
    try:
        row = Article.validate(data)
    except DataValidationError as exc:
        raise exc.at(**where) from None
    return tuple(row[name] if name in row else _DEFAULTS[name] for name in ARTICLE_INPUT_FIELDS)


def _jsonl_rows(path: str, progress: Progress | None) -> Iterator[tuple]:
    """The validated articles of JSON Lines file ``path``, one object per line; blank lines skipped."""
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise check.unreadable(path, exc) from exc
    with stream:
        for line, raw in enumerate(stream, 1):
            if progress is not None:
                progress(len(raw))
            where = {"source": path, "line": line}
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8").strip()
            except UnicodeDecodeError as exc:
                raise DataValidationError("row", raw[exc.start:exc.end], "UTF-8 text", **where) from None
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataValidationError("row", text, f"valid JSON ({exc.msg} at column {exc.colno})",
                                          **where) from None
            yield _article_row(data, "a JSON object", where)


def _article_rows(rows_or_jsonl_path, progress: Progress | None) -> Iterator[tuple]:
    if isinstance(rows_or_jsonl_path, (str, os.PathLike)):
        return _jsonl_rows(os.fspath(rows_or_jsonl_path), progress)
    if isinstance(rows_or_jsonl_path, (bytes, Mapping)) or not isinstance(rows_or_jsonl_path, Iterable):
        raise DataValidationError("rows_or_jsonl_path", rows_or_jsonl_path,
                                  "an iterable of rows (mappings) or the path of a JSON Lines file")
    return (_article_row(data, "a mapping of article fields", {"row": number})
            for number, data in enumerate(rows_or_jsonl_path, 1))


class ArticleRepository(BaseRepository[Article]):
    """News articles. Returned instances leave out ``search_vector``."""

    model = Article

    @reads
    def for_symbol(self, symbol: str, since=None, limit: int = 100, *, as_of=None) -> list[Article]:
        """Articles tagged ``symbol``, newest ``published_at`` first (undated last).

        ``since``: only articles published at or after it. Array containment
        (``symbols @> ARRAY[symbol]``), served by the GIN index on ``symbols``.
        """
        symbol, limit = check.required_text("symbol", symbol, TAG_LENGTH), check.limit(limit)
        since, as_of = check.optional_timestamp("since", since), check.optional_timestamp("as_of", as_of)
        query = where(Article.select(*_ARTICLE_FIELDS),
                       contains(Article.symbols, symbol),
                       None if since is None else Article.published_at >= since,
                       visible_to(Article, as_of))
        query = query.order_by(Article.published_at.desc(nulls="LAST"), Article.id.desc()).limit(limit)
        with self.session("for_symbol"):
            return list(query)

    @reads
    def recent(self, limit: int = 100, *, as_of=None) -> list[Article]:
        """The ``limit`` newest articles by ``published_at`` (undated ones after all dated ones)."""
        limit, as_of = check.limit(limit), check.optional_timestamp("as_of", as_of)
        visible = visible_to(Article, as_of)
        # Two index-ordered statements: ORDER BY published_at DESC NULLS LAST
        # cannot walk the (ASC NULLS LAST) published_at index, and would sort
        # the whole table on every call.
        dated = where(Article.select(*_ARTICLE_FIELDS), Article.published_at.is_null(False), visible)
        with self.session("recent"):
            found = list(dated.order_by(Article.published_at.desc(), Article.id.desc()).limit(limit))
            if len(found) < limit:
                undated = where(Article.select(*_ARTICLE_FIELDS), Article.published_at.is_null(), visible)
                found += list(undated.order_by(Article.id.desc()).limit(limit - len(found)))
        return found

    @reads
    def search(self, text: str, limit: int = 20, *, as_of=None) -> list[Article]:
        """Full-text search over title and content, best match first.

        ``text`` is web-search syntax (``websearch_to_tsquery``: words,
        ``"a phrase"``, ``or``, ``-word``) and can never be a syntax error.
        Ranked by ``ts_rank`` (title words weigh more than content words);
        each article has its rank as ``article.rank``. Uses the GIN index on
        the generated ``search_vector``.
        """
        text, limit = check.required_text("text", text, MAX_QUERY_TEXT), check.limit(limit)
        as_of = check.optional_timestamp("as_of", as_of)
        params: list[Any] = [text]
        visible = ""
        if as_of is not None:
            visible, params = "AND a.ingested_at <= %s ", params + [as_of]
        sql = (f"SELECT {_ARTICLE_COLUMNS}, ts_rank(a.search_vector, q) AS rank "
               "FROM articles a, websearch_to_tsquery('english', %s) AS q "
               f"WHERE a.search_vector @@ q {visible}"
               "ORDER BY rank DESC, a.published_at DESC NULLS LAST, a.id DESC LIMIT %s")
        with self.session("search") as db:
            rows = db.execute_sql(sql, params + [limit]).fetchall()
        read = statements(Article).reader(_ARTICLE_FIELDS, ("rank",))
        return [read(row) for row in rows]

    def create_if_new(self, url: str, **data) -> tuple[Article, bool]:
        """Insert the article unless one with ``url`` exists: ``(article, created)``.

        Race-safe: ``INSERT ... ON CONFLICT (url) DO NOTHING`` then, if nothing
        was inserted, a read of the existing row; concurrent callers with one
        url get one row. Raises ``DataValidationError`` for bad data.
        """
        url = check.required_text("url", url, 2048)
        row = Article.validate({**data, "url": url})
        with self.session("create_if_new"):
            # Built inside the session: Peewee 3 asks the model's database about RETURNING when
            # an insert is made, and only here does the proxy reach this repository's connection.
            insert = (Article.insert(row).on_conflict(action="IGNORE", conflict_target=[Article.url])
                      .returning(*_ARTICLE_FIELDS).objects(Article))
            for _ in range(3):  # the existing row may be deleted between the two statements
                inserted = list(insert.clone().execute())
                if inserted:
                    return inserted[0], True
                existing = Article.select(*_ARTICLE_FIELDS).where(Article.url == url).first()
                if existing is not None:
                    return existing, False
        raise NotFoundError(f"article url={url!r} kept vanishing while being created")


    def copy_from(self, rows_or_jsonl_path, *, batch_size: int = 1000,
                  progress: Progress | None = None) -> tuple[int, int]:
        """Bulk-load articles, skipping those whose ``url`` is stored: ``(created, skipped)``.

        ``rows_or_jsonl_path`` is an iterable of mappings or the path of a
        UTF-8 JSON Lines file (one object per line, blank lines skipped). Each
        row may set :data:`ARTICLE_INPUT_FIELDS` -- ``title`` (required),
        ``content``, ``source``, ``url``, ``published_at`` (naive = UTC; ISO
        text in a file), ``symbols``, ``metadata``; ``id`` and ``ingested_at``
        are the database's. Rows are validated as :meth:`create` validates
        them and sent ``batch_size`` at a time, one ``INSERT ... ON CONFLICT
        (url) DO NOTHING RETURNING id`` per batch: an article whose ``url`` is
        already stored, or came earlier in the input, is skipped and counted;
        articles without a ``url`` are always created. ``progress``, if given,
        is called with the bytes read of a file. All or nothing, in one
        transaction (the caller's, when inside a session): a bad row raises
        ``DataValidationError`` naming its ``field`` and ``value``, and the
        ``row`` (1-based), or ``source`` and ``line``; a file that cannot be
        read is a ``DataValidationError`` with ``field='path'``.
        """
        batch_size = check.limit(batch_size, "batch_size")
        rows = _article_rows(rows_or_jsonl_path, progress)
        created = skipped = 0
        # Rows are read inside the session: an input that reads the database needs the connection.
        with self.session("copy_from"):
            while batch := list(itertools.islice(rows, batch_size)):
                # Built inside the session, as in create_if_new: Peewee 3 asks the model's database
                # about RETURNING when an insert is made.
                insert = (Article.insert_many(batch, fields=_INPUT)
                          .on_conflict(action="IGNORE", conflict_target=[Article.url]).returning(Article.id))
                new = len(list(insert.tuples().execute()))
                created, skipped = created + new, skipped + len(batch) - new
        return created, skipped


class SentimentBucket(NamedTuple):
    """One bucket of a sentiment time series; ``bucket`` is its (aware UTC) start."""

    bucket: dt.datetime
    average: float  # mean score in the bucket
    count: int  # scores in the bucket


def _sentiment_filters(symbol, start, end, as_of) -> tuple[str, list]:
    """WHERE clause (and its parameters) for the scores of ``symbol``'s articles in [start, end)."""
    sql = ("FROM sentiment_scores s JOIN articles a ON a.id = s.article_id "
           "WHERE a.symbols @> ARRAY[%s]::text[] AND s.timestamp >= %s AND s.timestamp < %s")
    params: list[Any] = [symbol, start, end]
    if as_of is not None:
        sql, params = sql + " AND a.ingested_at <= %s", params + [as_of]
    return sql, params


# Per bucket: mean score and count (float8 and int8 already: what frame()'s binary reader expects).
_SERIES = "SELECT date_bin(%s, s.timestamp, %s), avg(s.score)::float8, count(*)::int8 {filters} GROUP BY 1 ORDER BY 1"


class SentimentScoreRepository(BaseRepository[SentimentScore]):
    """Sentiment scores of articles. A score's symbols are its article's ``symbols``."""

    model = SentimentScore

    @reads
    def for_article(self, article_id: int, *, limit: int = 100, as_of=None) -> list[SentimentScore]:
        """The first ``limit`` scores of one article, oldest first (none if it was ingested after ``as_of``)."""
        article_id = check.positive_int("article_id", article_id, check.MAX_INT_ID)
        limit, as_of = check.limit(limit), check.optional_timestamp("as_of", as_of)
        query = SentimentScore.select().where(SentimentScore.article == article_id)
        if as_of is not None:
            query = query.join(Article).where(Article.ingested_at <= as_of)
        with self.session("for_article"):
            return list(query.order_by(SentimentScore.timestamp, SentimentScore.id).limit(limit))

    @reads
    def average_for_symbol(self, symbol: str, start, end, *, as_of=None) -> float | None:
        """Mean score of the articles tagged ``symbol``, scored in ``[start, end)``; ``None`` if none."""
        symbol = check.required_text("symbol", symbol, TAG_LENGTH)
        start, end = check.span(start, end)
        sql, params = _sentiment_filters(symbol, start, end, check.optional_timestamp("as_of", as_of))
        with self.session("average_for_symbol") as db:
            (average,) = db.execute_sql("SELECT avg(s.score) " + sql, params).fetchone()
        return average

    @reads
    def timeseries(self, symbol: str, start, end, bucket="1 hour", *, as_of=None) -> list[SentimentBucket]:
        """Per ``bucket`` of score time in ``[start, end)``: mean score and count, oldest first."""
        symbol = check.required_text("symbol", symbol, TAG_LENGTH)
        start, end = check.span(start, end)
        width = check.bucket(bucket)
        sql, params = _sentiment_filters(symbol, start, end, check.optional_timestamp("as_of", as_of))
        sql = _SERIES.format(filters=sql)
        with self.session("timeseries") as db:
            rows = db.execute_sql(sql, [width, BUCKET_ORIGIN, *params]).fetchall()
        return [SentimentBucket(aware(b), average, n) for b, average, n in rows]

    @reads
    def frame(self, symbols, start=None, end=None, *, bucket="1 hour", model: str | None = None, as_of=None,
              tz: str | None = None, library: str = "pandas"):
        """Scores of ``symbols``' articles as a frame (the ``frames`` extra): per bucket, or one row per score.

        ``symbols`` is one symbol or a list; a score counts once for each
        symbol asked for that its article is tagged with. pandas: indexed like
        ``PriceRepository.frame`` (``timestamp`` in UTC, or ``tz``;
        (``symbol``, ``timestamp``) for a list); ``library="polars"`` or
        ``"arrow"``: the same types, with ``timestamp`` (and ``symbol``) as
        leading columns.

        ``bucket`` (default ``"1 hour"``): per bucket of the score's
        ``timestamp`` in ``[start, end)``, as :meth:`timeseries` (buckets
        aligned in ``tz``, labelled by their start): ``average`` (float64, the
        mean score) and ``count`` (int64). ``bucket=None``: one row per score,
        ``timestamp`` being when it was known -- its article's
        ``published_at``, in ``[start, end)`` -- with ``score`` and
        ``confidence`` (float64), ``model`` (str), ``article_id`` (int64) and
        ``published_at`` (aware); scores of articles without ``published_at``
        were never known and are left out. Ordered by symbol, then time (then
        score id). ``model``: only that scorer's scores. Point in time: with
        ``as_of``, only articles ingested by then. ``start``/``end`` take a
        datetime, ISO text, a ``date`` (midnight in ``tz``) or ``None``
        (unbounded). Raises ``DataValidationError`` for a bad parameter.
        """
        many = not isinstance(symbols, str)
        wanted = check.symbol_list(symbols, TAG_LENGTH) if many else [check.required_text("symbol", symbols, TAG_LENGTH)]
        timeframe = None if bucket is None else parse(bucket, "bucket")
        zone(tz)
        start, end = check.span(start, end, tz)
        kind = check_library(library)
        as_of = check.optional_timestamp("as_of", as_of)
        model = None if model is None else check.required_text("model", model, 64)
        at = 's."timestamp"' if timeframe is not None else "a.published_at"
        cond, params = in_range(start, end, at)
        if timeframe is None:
            cond += " AND a.published_at IS NOT NULL"
        if as_of is not None:
            cond, params = cond + " AND a.ingested_at <= %s", params + [as_of]
        if model is not None:
            cond, params = cond + " AND s.model = %s", params + [model]
        source = ("FROM unnest(%s::text[]) WITH ORDINALITY AS ws(symbol, position) "
                  "JOIN articles AS a ON a.symbols @> ARRAY[ws.symbol] "
                  f"JOIN sentiment_scores AS s ON s.article_id = a.id WHERE TRUE{cond}")
        if timeframe is not None:
            label, label_params = bucket_sql(timeframe, tz, 's."timestamp"')
            sql = (f"SELECT ws.position::int4, {label}, avg(s.score)::float8, count(*)::int8 {source} "
                   "GROUP BY ws.symbol, ws.position, 2 ORDER BY ws.symbol, 2")
            columns = [("position", "int4"), ("timestamp", "timestamptz"), ("average", "float8"), ("count", "int8")]
            with self.session("frame") as db:
                values = fetch_columns(db, sql, [*label_params, wanted, *params], columns)
            return build_frame(values, wanted if many else None, kind, tz)
        # One row per score. The model is text, which the binary reader's fixed-size rows cannot hold:
        # these rows come as a plain answer (one round trip), converted column by column.
        sql = (f"SELECT ws.position, a.published_at, s.score, s.confidence, s.model, s.article_id {source} "
               "ORDER BY ws.symbol, a.published_at, s.id")
        with self.session("frame") as db:
            rows = db.execute_sql(sql, [wanted, *params]).fetchall()
        return _score_frame(rows, wanted if many else None, kind, tz)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MICROSECOND = dt.timedelta(microseconds=1)


def _score_frame(rows: list[tuple], symbols: list[str] | None, kind: str, tz: str | None):
    """The raw-score frame of ``rows`` (position, published_at, score, confidence, model, article_id)."""
    np = need("numpy")
    position, published, score, confidence, model, article = zip(*rows) if rows else ((),) * 6
    stamps = np.array([(t - _EPOCH) // _MICROSECOND for t in published], dtype=np.int64).view("datetime64[us]")
    values = {
        "position": np.array(position, dtype=np.int32), "timestamp": stamps,
        "score": np.array(score, dtype=np.float64), "confidence": np.array(confidence, dtype=np.float64),
        "model": np.array(model, dtype=object), "article_id": np.array(article, dtype=np.int64),
        "published_at": stamps.copy(),
    }
    frame = build_frame(values, symbols, kind, tz)
    name = tz or "UTC"
    if kind == "pandas":
        frame["published_at"] = frame["published_at"].dt.tz_localize("UTC").dt.tz_convert(name)
        return frame
    if kind == "arrow":
        pa = need("pyarrow")
        at = frame.schema.get_field_index("published_at")
        return frame.set_column(at, "published_at", frame.column(at).cast(pa.timestamp("us", tz=name)))
    pl = need("polars")
    return frame.with_columns(pl.col("published_at").dt.replace_time_zone("UTC").dt.convert_time_zone(name))


class EventRepository(BaseRepository[Event]):
    """Market events, newest first.

    No GIN index on ``events.symbols``: SPEC gives GIN indexes only to
    ``articles.symbols`` and ``backtest_results.metrics``, and events are a
    small table (detected from a fraction of the articles). ``for_symbol`` is
    asked for recent events: with ``since`` it walks the ``timestamp`` index
    and filters the few rows in range; only an unbounded call reads the whole
    (small) table. Should events grow to article scale, a GIN index on
    ``symbols`` would serve the same ``@>`` condition unchanged.
    """

    model = Event

    @staticmethod
    def _query(as_of: dt.datetime | None, *conditions):
        query = Event.select()
        if as_of is not None:
            query = query.join(Article, JOIN.LEFT_OUTER)
            conditions += ((Article.ingested_at <= as_of) | (Event.article.is_null() & (Event.timestamp <= as_of)),)
        return where(query, *conditions).order_by(Event.timestamp.desc(), Event.id.desc())

    @reads
    def recent(self, min_severity: int = 1, since=None, limit: int = 100, *, as_of=None) -> list[Event]:
        """The ``limit`` newest events of severity >= ``min_severity`` (since ``since``)."""
        if isinstance(min_severity, bool) or not isinstance(min_severity, int) or not 1 <= min_severity <= 5:
            raise DataValidationError("min_severity", min_severity, "an integer from 1 to 5")
        return self._newest("recent", Event.severity >= min_severity, since, limit, as_of)

    @reads
    def by_type(self, event_type: str, since=None, *, limit: int = 100, as_of=None) -> list[Event]:
        """The ``limit`` newest events of ``event_type`` (since ``since``), newest first."""
        event_type = check.required_text("event_type", event_type, 64)
        return self._newest("by_type", Event.event_type == event_type, since, limit, as_of)

    @reads
    def for_symbol(self, symbol: str, since=None, *, limit: int = 100, as_of=None) -> list[Event]:
        """The ``limit`` newest events whose ``symbols`` contain ``symbol`` (since ``since``)."""
        symbol = check.required_text("symbol", symbol, TAG_LENGTH)
        return self._newest("for_symbol", contains(Event.symbols, symbol), since, limit, as_of)

    def _newest(self, operation: str, condition, since, limit: int, as_of) -> list[Event]:
        since, as_of = check.optional_timestamp("since", since), check.optional_timestamp("as_of", as_of)
        query = self._query(as_of, condition, None if since is None else Event.timestamp >= since)
        with self.session(operation):
            return list(query.limit(check.limit(limit)))
