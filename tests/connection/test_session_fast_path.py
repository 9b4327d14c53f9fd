"""The session's fast path keeps Peewee's semantics: its per-thread state, and ``execute_sql``."""
from __future__ import annotations

import logging
import threading

import peewee
import psycopg2.extensions
import pytest

import marketstore
from marketstore.database import PooledPostgresqlExtDatabase
from marketstore.transactions import AUTOCOMMIT, DRIVER, ThreadState


def fields(state) -> dict:
    """The state as Peewee keeps it, lists compared by content."""
    return dict(state.__dict__)


def test_opening_and_closing_a_session_leave_the_state_peewee_leaves():
    # open_session/close_session write Peewee's fields themselves: a field a new Peewee
    # adds to its state must be written there too, or a session would leave it stale.
    peewees, ours = ThreadState(), ThreadState()
    conn, mark, transaction = object(), object(), object()
    peewees.set_connection(conn)
    peewees.ctx.append(mark)
    peewees.transactions.append(transaction)
    peewees.mode = DRIVER
    ours.open_session(conn, DRIVER, mark, transaction)
    assert fields(ours) == fields(peewees)
    peewees.reset()
    ours.close_session()
    assert fields(ours) == fields(peewees)
    assert ours.mode is AUTOCOMMIT and ours.closed and ours.conn is None


def test_closing_a_session_gives_fresh_lists():
    state = ThreadState()
    state.open_session(object(), DRIVER, object(), object())
    before = state.ctx, state.transactions, getattr(state, "commit_callbacks", None)
    state.close_session()
    after = state.ctx, state.transactions, getattr(state, "commit_callbacks", None)
    assert all(a is not b for a, b in zip(before, after) if b is not None)


def test_the_state_of_a_session_is_this_threads_only(db):
    seen = {}
    with marketstore.get_db_session() as session:
        def other():
            seen["closed"] = session.is_closed()
            seen["in_transaction"] = session.in_transaction()
        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert not session.is_closed() and session.in_transaction()
    assert seen == {"closed": True, "in_transaction": False}


def test_execute_sql_in_a_session_logs_each_statement_to_the_peewee_logger(db, caplog):
    with caplog.at_level(logging.DEBUG, logger="peewee"):
        with marketstore.get_db_session() as session:
            assert session.execute_sql("SELECT %s", (7,)).fetchone() == (7,)
            assert session.execute_sql("SELECT 1").fetchone() == (1,)
    logged = [r.msg for r in caplog.records if r.name == "peewee"]
    assert logged == [("SELECT %s", (7,)), ("SELECT 1", None)]


@pytest.mark.parametrize("sql, peewee_error", [
    ("SELECT * FROM no_such_table", peewee.ProgrammingError),
    ("SELECT 1 / 0", peewee.DataError),
])
def test_execute_sql_raises_peewees_error_with_the_drivers_chained(database_url, sql, peewee_error):
    params = psycopg2.extensions.parse_dsn(database_url)
    database = PooledPostgresqlExtDatabase(params.pop("dbname"), max_connections=2, **params)
    try:
        database.open_transaction()
        with pytest.raises(peewee_error) as raised:
            database.execute_sql(sql)
        assert isinstance(raised.value.__context__, psycopg2.Error)
        database.close_transaction(commit=False)
    finally:
        database.close_all()


def test_execute_sql_outside_a_session_connects_as_peewee_does(database_url):
    params = psycopg2.extensions.parse_dsn(database_url)
    database = PooledPostgresqlExtDatabase(params.pop("dbname"), max_connections=2, **params)
    try:
        assert database.is_closed()
        assert database.execute_sql("SELECT 2").fetchone() == (2,)  # autoconnect
        assert not database.is_closed()
        database.close()
    finally:
        database.close_all()


@pytest.mark.skipif(not hasattr(peewee.Database, "_notify_hooks"), reason="query hooks are Peewee 4's")
def test_execute_sql_in_a_session_runs_peewees_query_hooks(db):
    events = []
    database = marketstore.db_connection.database
    database.query_hooks.append(events.append)
    try:
        with marketstore.get_db_session() as session:
            session.execute_sql("SELECT 1")
    finally:
        database.query_hooks.remove(events.append)
    assert [e.sql for e in events] == ["SELECT 1"]
