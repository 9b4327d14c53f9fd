"""What a session's transaction looks like from the server and from peewee.

The outermost session lets psycopg2 open and end the transaction (its own
BEGIN/COMMIT) instead of going through peewee's ``atomic()``; these tests pin
down what that must keep: one server transaction per session, savepoints for
``atomic()`` inside, a clean connection back in the pool whatever happened
(commit, any exception, an error raised by COMMIT itself), and peewee's own
``commit()``/``rollback()`` still meaning something inside a session.
Every outcome is read from a separate raw connection.
"""
from __future__ import annotations

import logging
import uuid

import peewee
import psycopg2.errors
import pytest

from marketstore import (
    IntegrityViolation,
    QueryError,
    SerializationFailure,
    get_db_session,
    retry_transaction,
)
from marketstore.connection import _in_transaction
from helpers import eventually


@pytest.fixture
def table(db, raw):
    """A scratch table of this test: ``k`` is unique, checked only at COMMIT."""
    name = f"session_{uuid.uuid4().hex[:10]}"
    with raw.cursor() as cur:
        cur.execute(f"CREATE TABLE {name} (k int NOT NULL, "
                    f"CONSTRAINT {name}_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)")
    yield name
    with raw.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")


def insert(session, table: str, k: int) -> None:
    session.execute_sql(f"INSERT INTO {table} (k) VALUES (%s)", (k,))


def keys(raw, table: str) -> list[int]:
    with raw.cursor() as cur:
        cur.execute(f"SELECT k FROM {table} ORDER BY k")
        return [k for k, in cur.fetchall()]


def pid_and_xid(session) -> tuple[int, int]:
    return session.execute_sql("SELECT pg_backend_pid(), txid_current()").fetchone()


def server_state(raw, pid: int) -> str | None:
    with raw.cursor() as cur:
        cur.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
        row = cur.fetchone()
        return row and row[0]


def body_commits(session, table):
    insert(session, table, 1)


def body_raises(exc):
    def body(session, table):
        insert(session, table, 1)
        raise exc
    return body


def body_fails_in_sql(session, table):
    insert(session, table, 1)
    session.execute_sql("SELECT 1 / 0")


def body_fails_at_commit(session, table):
    insert(session, table, 1)
    insert(session, table, 1)  # deferred: the duplicate is only refused by COMMIT


@pytest.mark.parametrize("body, raised, written", [
    (body_commits, None, [1]),
    (body_raises(RuntimeError("boom")), RuntimeError, []),
    (body_raises(KeyboardInterrupt()), KeyboardInterrupt, []),
    (body_raises(SystemExit(3)), SystemExit, []),
    (body_raises(GeneratorExit()), GeneratorExit, []),
    (body_fails_in_sql, QueryError, []),
    (body_fails_at_commit, IntegrityViolation, []),
], ids=["commit", "exception", "KeyboardInterrupt", "SystemExit", "GeneratorExit", "sql-error", "error-at-commit"])
def test_every_outcome_leaves_the_connection_idle_in_the_pool_in_autocommit(db, raw, table, body, raised, written):
    database = db.database
    seen = {}

    def run():
        with get_db_session() as session:
            seen["pid"], _ = pid_and_xid(session)
            assert server_state(raw, seen["pid"]) == "idle in transaction"
            body(session, table)

    if raised is None:
        run()
    else:
        with pytest.raises(raised):
            run()
    pid = seen["pid"]
    assert keys(raw, table) == written
    assert db.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}
    assert eventually(lambda: server_state(raw, pid), "idle") == "idle"
    assert database.is_closed() and database.transaction_depth() == 0 and not _in_transaction()

    # The same connection, checked out the peewee way, is back in autocommit:
    # a statement outside any transaction is visible to others at once.
    database.connect()
    try:
        assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] == pid
        insert(database, table, 99)
        assert keys(raw, table) == written + [99]
    finally:
        database.close()
    assert db.pool_status()["idle"] == 1


def test_a_session_is_one_server_transaction_and_peewee_knows_it(db, raw, table):
    database = db.database
    with get_db_session() as session:
        assert session.in_transaction() and session.transaction_depth() == 1 and _in_transaction()
        _, xid = pid_and_xid(session)
        insert(session, table, 1)
        assert pid_and_xid(session)[1] == xid
        assert keys(raw, table) == []  # not committed yet
        with get_db_session() as nested:
            assert pid_and_xid(nested)[1] == xid
            insert(nested, table, 2)
        assert keys(raw, table) == [], "a nested session must not commit"
        assert _in_transaction()
    assert keys(raw, table) == [1, 2]
    assert not database.in_transaction() and not _in_transaction()
    with get_db_session() as session:
        assert pid_and_xid(session)[1] != xid


def test_atomic_inside_a_session_is_a_savepoint_with_its_own_commit_and_rollback(db, raw, table):
    with get_db_session() as session:
        with session.atomic():  # the very first statement of the transaction is a SAVEPOINT
            insert(session, table, 1)
        with pytest.raises(ZeroDivisionError):
            with session.atomic():
                insert(session, table, 2)
                raise ZeroDivisionError
        with session.atomic() as savepoint:
            insert(session, table, 3)
            savepoint.rollback()
            insert(session, table, 4)
        with session.atomic() as savepoint:
            insert(session, table, 5)
            savepoint.commit()
            insert(session, table, 6)
        with pytest.raises(peewee.DataError):
            with session.atomic():  # a failed statement spoils only the savepoint
                session.execute_sql("SELECT 'x'::int")
        insert(session, table, 7)
        assert keys(raw, table) == []
    assert keys(raw, table) == [1, 4, 5, 6, 7]


def test_peewee_commit_inside_a_session_commits_so_far_and_the_rest_stays_one_transaction(db, raw, table):
    with pytest.raises(RuntimeError):
        with get_db_session() as session:
            insert(session, table, 1)
            _, before = pid_and_xid(session)
            session.commit()
            assert keys(raw, table) == [1]
            assert session.in_transaction()
            _, after = pid_and_xid(session)
            assert after != before
            insert(session, table, 2)
            with session.atomic():
                insert(session, table, 3)
            assert pid_and_xid(session)[1] == after
            assert keys(raw, table) == [1], "work after commit() must wait for the session's end"
            raise RuntimeError("the part after commit() is rolled back")
    assert keys(raw, table) == [1]
    assert db.pool_status()["in_use"] == 0


def test_peewee_rollback_inside_a_session_discards_so_far_and_the_session_goes_on(db, raw, table):
    with get_db_session() as session:
        insert(session, table, 1)
        session.rollback()
        insert(session, table, 2)
        with session.transaction() as inner:  # peewee's transaction object, nested: same meaning
            insert(session, table, 3)
            inner.rollback()
        insert(session, table, 4)
        assert keys(raw, table) == []
    assert keys(raw, table) == [4]


def test_error_at_commit_is_translated_logged_once_and_the_connection_kept(db, raw, table, caplog):
    caplog.set_level(logging.DEBUG, logger="marketstore")
    with pytest.raises(IntegrityViolation) as info:
        with get_db_session("load", "Scratch") as session:
            pid, _ = pid_and_xid(session)
            body_fails_at_commit(session, table)
    cause = info.value.__cause__
    chain = [cause, cause.__cause__, cause.__context__, *getattr(cause, "args", ())]
    assert any(isinstance(link, psycopg2.errors.UniqueViolation) for link in chain), chain
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "load Scratch" in errors[0], errors
    with get_db_session() as session:
        assert pid_and_xid(session)[0] == pid
        insert(session, table, 1)
    assert keys(raw, table) == [1]


def test_serialization_failure_at_commit_is_retried_by_retry_transaction(db, raw, table):
    # A deferred constraint trigger fails COMMIT with SQLSTATE 40001 twice
    # (the sequence is not transactional, so it counts every attempt).
    with raw.cursor() as cur:
        cur.execute(f"""
            CREATE SEQUENCE {table}_attempts;
            CREATE FUNCTION {table}_conflict() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('{table}_attempts') <= 2 THEN
                    RAISE EXCEPTION 'simulated conflict' USING ERRCODE = 'serialization_failure';
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER conflict AFTER INSERT ON {table}
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_conflict();
        """)

    def transaction():
        with get_db_session("fill") as session:
            insert(session, table, 1)
        return "done"

    with pytest.raises(SerializationFailure):
        transaction()
    assert keys(raw, table) == []
    assert retry_transaction(transaction, retries=3, backoff=0) == "done"
    assert keys(raw, table) == [1]
    with raw.cursor() as cur:
        cur.execute(f"SELECT last_value FROM {table}_attempts")
        assert cur.fetchone()[0] == 3
        cur.execute(f"DROP FUNCTION {table}_conflict() CASCADE")
    assert db.pool_status() == {"max_connections": 30, "pool_size": 10, "in_use": 0, "idle": 1, "replicas": []}


@pytest.mark.skipif(not hasattr(peewee.Database, "after_commit"), reason="after_commit() is new in peewee 4")
def test_after_commit_callbacks_run_after_commit_and_not_after_rollback(db, raw, table):
    seen = []
    with get_db_session() as session:
        insert(session, table, 1)
        session.after_commit(lambda: seen.append(("committed", keys(raw, table), session.in_transaction())))
    assert seen == [("committed", [1], False)]
    with pytest.raises(RuntimeError):
        with get_db_session() as session:
            session.after_commit(lambda: seen.append("rolled back"))
            raise RuntimeError
    assert seen == [("committed", [1], False)]
