"""Bulk loading from files: price bars from CSV, articles from JSON Lines.

Every row is held to the models' rules, and a bad one stops the load with a
:class:`FileFormatError` naming the file, the line and the field. The whole
file is loaded in one transaction, so a file that fails on its last line
leaves nothing behind. A price file goes to ``PriceRepository.copy_from``,
which streams it to the server's COPY; with ``upsert`` it is read here and
passed to ``upsert_many``.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
from decimal import Decimal
from itertools import islice
from typing import Callable, Iterable, Iterator

from .connection import get_db_session
from .errors import DataValidationError, MarketstoreError
from .models import Article, Price
from .repositories import (
    PRICE_HEADER,
    ArticleRepository,
    PriceRepository,
    price_csv_header,
)

ARTICLE_FIELDS = ("title", "content", "source", "url", "published_at", "symbols", "metadata")
# Set by the database: a client must not choose when we learnt of an article (point in time).
ARTICLE_READ_ONLY = {"id": "assigned by the database", "ingested_at": "set by the database on insert"}
CHUNK_ROWS = 5000

Progress = Callable[[int], None]


class FileFormatError(MarketstoreError, ValueError):
    """A row of an input file is malformed; the message names file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = path, line, field, problem
        where = ", ".join(filter(None, [f"line {line}" if line else None,
                                        f"field '{field}'" if field else None]))
        super().__init__(f"{path}: {where + ': ' if where else ''}{problem}")


def _bad_value(path: str, line: int, exc: DataValidationError) -> FileFormatError:
    field = exc.field.split("[")[0]  # "symbols[2]" -> "symbols"
    if exc.value is None or exc.value == "":
        return FileFormatError(path, line, field, f"missing, expected {exc.expected}")
    value = exc.value
    if isinstance(value, (Decimal, dt.datetime)):  # already parsed: show it as the file wrote it
        value = format(value, "f") if isinstance(value, Decimal) else value.isoformat()
    if isinstance(value, str) and len(value) > 60:
        value = value[:57] + "..."
    return FileFormatError(path, line, field, f"got {value!r}, expected {exc.expected}")


def _decoded_lines(stream, path: str, progress: Progress | None, first: int = 1) -> Iterator[str]:
    """The lines of binary ``stream``, decoded; ``first`` is the number of the first one."""
    for number, raw in enumerate(stream, first):
        if progress is not None:
            progress(len(raw))
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise FileFormatError(path, number, None, f"not UTF-8 text (byte {exc.start + 1} of the line)") from None


def _open(path: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise FileFormatError(path, None, None, f"cannot read the file ({exc.strerror})") from None


def file_size(path: str) -> int | None:
    """Size in bytes for a progress bar, or ``None`` when unknown."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _file_error(path: str, exc: DataValidationError) -> MarketstoreError:
    """``copy_from``'s error for ``path`` ("<path>, line N[: field]") as a :class:`FileFormatError`."""
    found = re.fullmatch(r"line (\d+)(?:: (.+))?", exc.field[len(path) + 2:]) \
        if exc.field.startswith(f"{path}, ") else None
    if found is None:
        return exc  # a parameter, not the file
    line, field = int(found.group(1)), found.group(2)
    if field is not None:
        return _bad_value(path, line, DataValidationError(field, exc.value, exc.expected))
    return FileFormatError(path, line, None, f"got {exc.value!r}, expected {exc.expected}")


def _empty_file(path: str) -> FileFormatError:
    return FileFormatError(path, None, None, f"empty file: expected the header {PRICE_HEADER}")


def load_price_file(path: str, interval: str = "1m", upsert: bool = False, progress: Progress | None = None) -> int:
    """Load the price CSV file ``path`` in one transaction; returns the number of rows loaded.

    Header ``symbol,timestamp,open,high,low,close,volume[,interval]`` (any
    order); rows without an interval column get ``interval``. New bars go
    through ``PriceRepository.copy_from`` (COPY, streamed: memory stays flat
    whatever the file's size; a bar already stored or repeated in the file is
    an ``IntegrityViolation`` naming the line). With ``upsert``, rows are read
    and validated here and written by ``upsert_many`` (a bar repeated in the
    file: the last one wins, and both rows are counted). Raises
    :class:`FileFormatError` at the first bad line.
    """
    if upsert:
        return load_prices(read_prices(path, interval, progress), upsert=True)
    if file_size(path) == 0 and os.path.isfile(path):  # copy_from takes it as no rows; a user meant something
        raise _empty_file(path)
    try:
        return PriceRepository().copy_from(path, interval=interval, progress=progress)
    except DataValidationError as exc:
        raise _file_error(path, exc) from None
    except OSError as exc:
        raise FileFormatError(path, None, None, f"cannot read the file ({exc.strerror})") from None


def read_prices(path: str, interval: str = "1m", progress: Progress | None = None) -> Iterator[dict]:
    """Yield the validated price rows of CSV file ``path`` (for ``upsert_many``).

    Header ``symbol,timestamp,open,high,low,close,volume[,interval]`` (any order);
    rows without an interval column get ``interval``. Timestamps are ISO-8601,
    naive ones UTC. Raises :class:`FileFormatError` at the first bad line.
    Memory stays flat: nothing is kept of the rows already yielded.
    """
    with _open(path) as stream:
        try:
            found = price_csv_header(stream, path)  # the same header rules as copy_from
        except DataValidationError as exc:
            raise _file_error(path, exc) from None
        if found is None:
            raise _empty_file(path)
        header, size = found
        if progress is not None:
            progress(size)
        reader = csv.reader(_decoded_lines(stream, path, progress, first=2))
        while True:
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise FileFormatError(path, reader.line_num + 1, None, f"not CSV ({exc})") from None
            line = reader.line_num + 1  # the reader starts after the header
            if not any(cell.strip() for cell in record):
                continue  # blank line
            if len(record) < len(header):
                raise FileFormatError(path, line, header[len(record)], f"missing (the line has {len(record)} "
                                      f"fields, the header {len(header)})")
            if len(record) > len(header):
                raise FileFormatError(path, line, None, f"{len(record)} fields, the header has {len(header)}")
            data = {name: cell.strip() for name, cell in zip(header, record)}
            for name, value in data.items():
                if value == "" and name != "interval":
                    raise FileFormatError(path, line, name, "missing value")
            if not data.get("interval"):
                data["interval"] = interval
            try:
                row = Price.validate(data)
            except DataValidationError as exc:
                raise _bad_value(path, line, exc) from None
            yield row


def read_articles(path: str, progress: Progress | None = None) -> Iterator[dict]:
    """Yield the validated article rows of JSON Lines file ``path``.

    One object per line with ``title`` (required) and any of ``content``,
    ``source``, ``url``, ``published_at`` (ISO-8601), ``symbols`` (a list of
    strings), ``metadata`` (an object). Blank lines are skipped. Raises
    :class:`FileFormatError` at the first bad line.
    """
    with _open(path) as stream:
        for line, text in enumerate(_decoded_lines(stream, path, progress), 1):
            text = text.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FileFormatError(path, line, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(data, dict):
                raise FileFormatError(path, line, None, f"expected a JSON object, got {type(data).__name__}")
            for name, why in ARTICLE_READ_ONLY.items():
                if name in data:
                    raise FileFormatError(path, line, name, f"cannot be loaded: it is {why}")
            for name in data:
                if name not in ARTICLE_FIELDS:
                    raise FileFormatError(path, line, name, f"unknown field (expected {', '.join(ARTICLE_FIELDS)})")
            try:
                yield Article.validate(data)
            except DataValidationError as exc:
                raise _bad_value(path, line, exc) from None


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def load_prices(rows: Iterable[dict], upsert: bool = False) -> int:
    """Store ``rows`` in one transaction: ``PriceRepository.copy_from`` (COPY), or
    ``upsert_many`` with ``upsert``. Returns the number of rows written.

    ``rows`` may be a lazy reader: an error it raises part-way rolls everything back.
    """
    repo = PriceRepository()
    written = 0
    with get_db_session("ingest prices", "Price"):
        for chunk in _chunks(rows, CHUNK_ROWS):
            written += repo.upsert_many(chunk) if upsert else repo.copy_from(chunk)
    return written


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
