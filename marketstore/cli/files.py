"""Bulk loading from files: price bars from CSV or Parquet, articles from JSON Lines.

Every row is held to the models' rules, and a bad one stops the load with a
``DataValidationError`` whose ``source``, ``line``, ``field`` and ``value``
say where and what. The whole file is loaded in one transaction, so a file
that fails on its last line leaves nothing behind. A price file goes to
``PriceRepository.copy_from``, or ``upsert_many`` with ``upsert``: one reader,
which streams it to the server's COPY.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator

from ..connection import get_db_session
from ..errors import DataValidationError
from ..models import Article
from ..repositories import PRICE_HEADER, ArticleRepository, PriceRepository
from ..validation import unreadable

ARTICLE_FIELDS = ("title", "content", "source", "url", "published_at", "symbols", "metadata")
# Set by the database: a client must not choose when we learnt of an article (point in time).
ARTICLE_READ_ONLY = {"id": "assigned by the database", "ingested_at": "set by the database on insert"}

Progress = Callable[[int], None]


def _decoded_lines(stream, path: str, progress: Progress | None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the lines of binary ``stream``, decoded."""
    for number, raw in enumerate(stream, 1):
        if progress is not None:
            progress(len(raw))
        try:
            yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise DataValidationError("row", raw[exc.start:exc.end], "UTF-8 text", source=path, line=number) from None


def file_size(path: str) -> int | None:
    """Size in bytes for a progress bar, or ``None`` when unknown."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def load_price_file(path: str, interval: str = "1m", upsert: bool = False, progress: Progress | None = None) -> int:
    """Load the price CSV (or Parquet: a name ending in ``.parquet``) file ``path`` in one transaction.

    Returns the number of rows loaded. A Parquet file has the same columns
    (the ``frames`` extra reads it, one record batch at a time) and its errors
    name the ``row`` (1-based) instead of the line.

    Header ``symbol,timestamp,open,high,low,close,volume[,interval]`` (any
    order); rows without an interval get ``interval``. New bars go through
    ``PriceRepository.copy_from`` (a bar already stored or repeated in the
    file is a ``DuplicateKeyError`` naming the line); with ``upsert``,
    through ``upsert_many`` (a bar repeated in the file: the last one wins,
    and both rows are counted). Both read the file with the same reader,
    streamed: memory stays flat whatever its size. Raises
    ``DataValidationError`` (``source``, ``line``, ``field``, ``value``) at
    the first bad line, or for an empty file.
    """
    # An empty CSV file: the repository takes it as no rows; a user meant some.
    if file_size(path) == 0 and os.path.isfile(path) and not path.lower().endswith(".parquet"):
        raise DataValidationError("header", "", f"the header {PRICE_HEADER} (the file is empty)", source=path, line=1)
    prices = PriceRepository()
    load = prices.upsert_many if upsert else prices.copy_from
    return load(path, interval=interval, progress=progress)


def read_articles(path: str, progress: Progress | None = None) -> Iterator[dict]:
    """Yield the validated article rows of JSON Lines file ``path``.

    One object per line with ``title`` (required) and any of ``content``,
    ``source``, ``url``, ``published_at`` (ISO-8601), ``symbols`` (a list of
    strings), ``metadata`` (an object). Blank lines are skipped. Raises
    ``DataValidationError`` (``source``, ``line``, ``field``, ``value``) at the first bad line.
    """
    try:
        stream = open(path, "rb")
    except OSError as exc:
        raise unreadable(path, exc) from exc
    with stream:
        for line, text in _decoded_lines(stream, path, progress):
            at = {"source": path, "line": line}
            text = text.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataValidationError("row", text, f"valid JSON ({exc.msg} at column {exc.colno})",
                                          **at) from None
            if not isinstance(data, dict):
                raise DataValidationError("row", data, "a JSON object", **at)
            for name, why in ARTICLE_READ_ONLY.items():
                if name in data:
                    raise DataValidationError(name, data[name], f"no {name}: it is {why}", **at)
            for name in data:
                if name not in ARTICLE_FIELDS:
                    raise DataValidationError(name, data[name], f"a known field ({', '.join(ARTICLE_FIELDS)})", **at)
            try:
                yield Article.validate(data)
            except DataValidationError as exc:
                raise exc.at(**at) from None


def load_articles(rows: Iterable[dict]) -> tuple[int, int]:
    """Store ``rows`` in one transaction; an article whose ``url`` is already stored
    is skipped. Returns ``(created, skipped)``."""
    repo = ArticleRepository()
    created = skipped = 0
    with get_db_session("ingest articles", "Article"):
        for row in rows:
            if row.get("url") is None:
                repo.create(**row)
                created += 1
                continue
            data = dict(row)
            _, new = repo.create_if_new(url=data.pop("url"), **data)
            created += new
            skipped += not new
    return created, skipped
