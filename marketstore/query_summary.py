"""What a statement's text says of it: its operation, its first table, its ``db.query.summary``.

OpenTelemetry's database conventions name a statement's span by a low-cardinality
summary of its text -- the operations and the tables they name, in order --
and never by the text itself, which may hold literals (:mod:`marketstore.telemetry`).
"""
from __future__ import annotations

import re

SUMMARY_LENGTH = 255  # the conventions' bound of db.query.summary
PARSED_PREFIX = 2000  # characters of a statement its summary is read from (a 1,000-row INSERT is 70k)

_PART = r'(?:"(?:[^"]|"")*"|[A-Za-z_][\w$]*)'
# A literal, a dollar-quoted string, a comment, a (qualified) name, or ( ) , ;
_TOKEN = re.compile(rf"""'(?:[^']|'')*'?|\$(\w*)\$.*?\$\1\$|--[^\n]*|/\*.*?\*/|{_PART}(?:\s*\.\s*{_PART})*|[(),;]""",
                    re.S)
_OPERATIONS = {"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "TRUNCATE"}
_NOT_AN_OPERATION_AFTER = {"DO", "FOR", "KEY", "ON"}  # ON CONFLICT DO UPDATE, FOR UPDATE, ON DELETE
_TARGET_AFTER = {"FROM", "JOIN", "INTO", "UPDATE", "COPY", "TRUNCATE"}
_SKIPPED_BEFORE_TARGET = {"ONLY", "LATERAL", "TABLE"}
_NOT_A_TARGET = {"STDIN", "STDOUT", "SELECT", "VALUES", "WITH"}


def summarize(sql: str) -> tuple[str | None, str | None, str]:
    """``(db.operation.name, db.collection.name, db.query.summary)`` of ``sql`` (``None``: none found).

    The summary is the operations and the tables they name, in order
    (``SELECT prices``, ``INSERT prices SELECT staging``); literals and
    comments are skipped, and a ``FROM`` inside a function's parentheses
    (``extract(epoch FROM ...)``) names no table. A statement that is not a
    query (``BEGIN``, ``SET``, ``CREATE``) is its first word.
    """
    words: list[str] = []
    tables: list[str] = []
    queries = [True]  # whether each open parenthesis holds a query (None: not known yet)
    expect = None  # the keyword whose table comes next
    pending = None  # a table after FROM/JOIN, unless "(" follows (then it was a function)
    previous = ""
    for match in _TOKEN.finditer(sql[:PARSED_PREFIX]):
        token = match.group()
        if token[0] in "'$-/":  # a literal or a comment
            continue
        if pending is not None:
            if token != "(":
                words.append(pending)
                tables.append(pending)
            pending = None
        if token in "(),;":
            if token == "(":
                queries.append(None)
            elif token == ")" and len(queries) > 1:
                queries.pop()
            expect, previous = None, token
            continue
        word = token.upper()
        if not previous and word not in _OPERATIONS and word != "WITH":
            return word, None, word  # BEGIN, SET, SHOW, CREATE...: the command itself
        if queries[-1] is None:
            queries[-1] = word in ("SELECT", "WITH", "VALUES")
        if expect is not None:
            if word in _SKIPPED_BEFORE_TARGET:
                continue
            if word not in _NOT_A_TARGET and word not in _OPERATIONS:
                table = _name(token)
                if expect in ("FROM", "JOIN"):
                    pending = table
                else:
                    words.append(table)
                    tables.append(table)
                expect, previous = None, word
                continue
            expect = None
        if queries[-1] and previous not in _NOT_AN_OPERATION_AFTER:
            if word in _OPERATIONS:
                words.append(word)
            if word in _TARGET_AFTER:
                expect = word
        previous = word
    if pending is not None:
        words.append(pending)
        tables.append(pending)
    # One segment per operation; a repeated one (a subquery of the same table) is said once.
    segments: list[tuple] = []
    for word in words:
        if word in _OPERATIONS or not segments:
            if segments and len(segments[-1]) == 1 and segments[-1][0] == word:
                continue  # SELECT (SELECT ... FROM t): one SELECT t
            segments.append((word,))
        else:
            segments[-1] += (word,)
    kept = [segment for n, segment in enumerate(segments) if segment not in segments[:n]]
    summary = " ".join(word for segment in kept for word in segment)
    return (segments[0][0] if segments else None), (tables[0] if tables else None), summary[:SUMMARY_LENGTH]


def _name(token: str) -> str:
    """A (qualified) name as written, without its quotes: ``"public" . "prices"`` is ``public.prices``."""
    parts = re.findall(_PART, token)
    return ".".join(p[1:-1].replace('""', '"') if p.startswith('"') else p for p in parts)
