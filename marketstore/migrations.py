"""The migration layer: apply the peewee-migrate files and check the live schema.

The files in the top-level ``migrations/`` folder are what ``pw_migrate migrate
--directory migrations`` reads; the same files are installed as the package
``marketstore._migrations`` so :func:`run_migrations` works from any install.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from peewee import ForeignKeyField
from peewee_migrate import Router
from playhouse.postgres_ext import ArrayField

from .connection import DatabaseConnection, db_connection
from .errors import DRIVER_ERRORS, ReadOnlyError, driver_error
from .models import MODELS

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key: two services deploying at once apply migrations
# one after the other instead of racing on CREATE TABLE.
MIGRATION_LOCK_KEY = 0x6D61726B6574  # "market"
# peewee-migrate's history table (its default name, passed explicitly so that
# the plain SELECT of _history() reads the table the router writes).
MIGRATE_TABLE = "migratehistory"

_PG_TYPES = {
    "AUTO": "integer", "BIGAUTO": "bigint", "INT": "integer", "BIGINT": "bigint",
    "SMALLINT": "smallint", "DOUBLE": "double precision", "FLOAT": "real", "TEXT": "text",
    "TIMESTAMPTZ": "timestamp with time zone", "JSONB": "jsonb", "BOOL": "boolean",
}


def migrations_dir() -> Path:
    """The folder holding the migration files (installed copy, else the source tree)."""
    try:
        from . import _migrations  # type: ignore[attr-defined]

        return Path(_migrations.__file__).parent
    except ImportError:  # running from a source checkout that was not installed
        return Path(__file__).resolve().parent.parent / "migrations"


def _expected_type(field) -> str:
    if isinstance(field, ForeignKeyField):
        return _expected_type(field.rel_field).replace("serial", "")
    if isinstance(field, ArrayField):
        return _PG_TYPES.get(field.field_type, field.field_type.lower()) + "[]"
    kind = field.field_type
    if kind == "DECIMAL":
        return f"numeric({field.max_digits},{field.decimal_places})"
    if kind == "VARCHAR":
        return f"character varying({field.max_length})"
    return _PG_TYPES.get(kind, kind.lower())


class DatabaseMigration:
    """Applies, rolls back and verifies the schema through one connection."""

    def __init__(self, connection: DatabaseConnection | None = None):
        self.connection = connection or db_connection

    def _router(self, db) -> Router:
        return Router(db, migrate_dir=migrations_dir(), migrate_table=MIGRATE_TABLE, logger=logger)

    def migrate(self) -> list[str]:
        """Apply every pending migration in one transaction; returns their names.

        Raises ``ReadOnlyError`` (nothing done) when the server is a standby.
        """
        with self.connection.session("migrate") as db:
            self._refuse_standby(db, "migrate")
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            return self._router(db).run()

    def rollback(self, steps: int = 1) -> list[str]:
        """Undo the last ``steps`` applied migrations; returns their names.

        Raises ``ReadOnlyError`` (nothing done) when the server is a standby.
        """
        undone = []
        with self.connection.session("rollback") as db:
            self._refuse_standby(db, "rollback")
            db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            for _ in range(steps):
                router = self._router(db)  # its cached state is stale after each step
                if not router.done:
                    break
                undone.append(router.done[-1])
                router.rollback()
        return undone

    def _refuse_standby(self, db, operation: str) -> None:
        # Checked first, before the advisory lock and before peewee-migrate's
        # CREATE TABLE IF NOT EXISTS of its history, which a standby refuses
        # with a bare 25006 that would not say why.
        if _in_recovery(db):
            raise ReadOnlyError(f"{operation}: {self.connection.settings.safe_url()} is a standby "
                                "(in recovery): run migrations on the primary")

    def applied(self) -> list[str]:
        """Names of the migrations recorded in the database, oldest first.

        Only reads: works on a standby, and a database without the history
        table has nothing applied (the table is not created).
        """
        with self.connection.session("applied") as db:
            return _history(db)

    def pending(self) -> list[str]:
        """Names of the migration files not yet applied (only reads, as :meth:`applied`)."""
        with self.connection.session("pending") as db:
            done = set(_history(db))
            return [name for name in self._router(db).todo if name not in done]

    def verify_schema(self) -> list[str]:
        """Differences between the models and the live database; ``[]`` when healthy.

        Checks tables, columns (type, nullability), indexes (name, columns,
        uniqueness, method) and named CHECK / FOREIGN KEY constraints. Only
        reads, so it runs on a standby too; a comparison that cannot be made
        there (or without the TEMP privilege) is returned as an entry saying
        ``... not compared: <why>``, so the result is never ``[]`` unchecked.
        """
        problems: list[str] = []
        with self.connection.session("verify_schema") as db:
            standby = _in_recovery(db)
            for model in MODELS:
                problems += self._verify_table(db, model, standby)
        return problems

    def _verify_table(self, db, model, standby: bool) -> list[str]:
        table = model._meta.table_name
        cursor = db.execute_sql(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
            "a.attgenerated <> '', pg_get_expr(d.adbin, d.adrelid) "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace "
            "AND a.attnum > 0 AND NOT a.attisdropped", (table,))
        live = {row[0]: row[1:] for row in cursor.fetchall()}
        if not live:
            return [f"{table}: table missing"]
        problems = []
        for field in model._meta.sorted_fields:
            column, expected = field.column_name, _expected_type(field)
            if column not in live:
                problems.append(f"{table}.{column}: column missing")
                continue
            kind, notnull, generated, default = live.pop(column)
            if kind != expected:
                problems.append(f"{table}.{column}: type is {kind}, expected {expected}")
            if notnull != (not field.null):
                problems.append(f"{table}.{column}: {'NOT NULL' if notnull else 'nullable'}, "
                                f"expected {'nullable' if field.null else 'NOT NULL'}")
            if not generated and not field.primary_key and kind == expected:
                problems += _verify_default(db, f"{table}.{column}", kind, _declared_default(field), default)
        problems += [f"{table}.{column}: unexpected column" for column in live]

        cursor = db.execute_sql(
            "SELECT i.relname, ix.indisunique, am.amname, "
            "ARRAY(SELECT a.attname FROM unnest(ix.indkey) WITH ORDINALITY k(n, o) "
            "      JOIN pg_attribute a ON a.attrelid = ix.indrelid AND a.attnum = k.n ORDER BY k.o) "
            "FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid "
            "JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_am am ON am.oid = i.relam "
            "WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace "
            "AND NOT ix.indisprimary", (table,))
        indexes = {name: (unique, method, list(cols)) for name, unique, method, cols in cursor.fetchall()}
        for index in model._meta.fields_to_index():
            columns = [getattr(e, "column_name", str(e)) for e in index._expressions]
            expected = (bool(index._unique), (index._using or "btree").lower(), columns)
            found = indexes.pop(index._name, None)
            if found is None:
                problems.append(f"{table}: index {index._name} missing")
            elif found != expected:
                problems.append(f"{table}: index {index._name} is {found}, expected {expected}")
        problems += [f"{table}: unexpected index {name}" for name in indexes]

        cursor = db.execute_sql(
            "SELECT conname, contype, confdeltype, confrelid::regclass::text FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('c', 'f')", (table,))
        constraints = {name: (kind, action, ref) for name, kind, action, ref in cursor.fetchall()}
        checks = model._meta.rules.constraints()
        for name in checks:
            if constraints.pop(name, None) is None:
                problems.append(f"{table}: check constraint {name} missing")
        problems += _verify_check_definitions(db, table, checks, standby)
        actions = {"CASCADE": "c", "SET NULL": "n", "RESTRICT": "r", None: "a"}
        for field in model._meta.refs:
            name = f"{table}_{field.column_name}_fkey"
            found = constraints.pop(name, None)
            expected = ("f", actions.get(field.on_delete, "a"), field.rel_model._meta.table_name)
            if found is None:
                problems.append(f"{table}: foreign key {name} missing")
            elif found != expected:
                problems.append(f"{table}: foreign key {name} is {found}, expected {expected}")
        problems += [f"{table}: unexpected constraint {name}" for name in constraints]
        return problems


def _declared_default(field) -> str | None:
    """The ``DEFAULT ...`` expression a model declares for ``field`` (see models._default)."""
    for clause in field.constraints or ():
        text = getattr(clause, "sql", "")
        if text.startswith("DEFAULT "):
            return text[len("DEFAULT "):]
    return None


def _verify_default(db, column: str, kind: str, expected: str | None, live: str | None) -> list[str]:
    if expected is None or live is None:
        if expected == live:
            return []
        return [f"{column}: default is {live or 'none'}, expected {expected or 'none'}"]
    # PostgreSQL prints defaults its own way ('{}'::text[], now()): compare values,
    # not text. Both expressions come from our models and the catalog, never from users;
    # now() is the same within one statement.
    same = db.execute_sql(f"SELECT ({expected})::{kind} IS NOT DISTINCT FROM ({live})::{kind}").fetchone()[0]
    return [] if same else [f"{column}: default is {live}, expected {expected}"]


def _verify_check_definitions(db, table: str, checks: dict[str, str], standby: bool) -> list[str]:
    """Compare CHECK definitions as PostgreSQL prints them.

    The model's expressions are added to a temporary copy of the table inside a
    savepoint that is rolled back, so PostgreSQL normalises both sides alike.
    That is a write: on a standby (any temporary table is refused there,
    SQLSTATE 25006) or without the TEMP privilege the definitions are not
    compared, and one entry says so instead.
    """
    if not checks:
        return []
    not_compared = f"{table}: check constraint definitions ({', '.join(checks)}) not compared: "
    if standby:
        return [not_compared + "the server is a standby (in recovery), where the temporary table "
                "that normalises them cannot be created; run verify on the primary"]
    scratch = f"_verify_{table}"
    live_sql = ("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'c'")
    try:
        with db.atomic() as savepoint:
            db.execute_sql(f'CREATE TEMP TABLE "{scratch}" (LIKE "{table}")')
            for name, expression in checks.items():
                db.execute_sql(f'ALTER TABLE "{scratch}" ADD CONSTRAINT "{name}" CHECK ({expression}) NOT VALID')
            expected = dict(db.execute_sql(live_sql, (scratch,)).fetchall())
            savepoint.rollback()
    except DRIVER_ERRORS as exc:
        logger.warning("verify_schema: CHECK definitions of %s not compared: %s", table, exc)
        return [not_compared + str(driver_error(exc) or exc).strip().splitlines()[0]]
    live = dict(db.execute_sql(live_sql, (table,)).fetchall())
    problems = []
    for name, definition in expected.items():
        definition = definition.replace(" NOT VALID", "")
        if name in live and live[name] != definition:
            problems.append(f"{table}: check constraint {name} is {live[name]}, expected {definition}")
    return problems


def _in_recovery(db) -> bool:
    return db.execute_sql("SELECT pg_is_in_recovery()").fetchone()[0]


def _history(db) -> list[str]:
    """The applied migrations, read with a plain SELECT.

    peewee-migrate's router creates its history table (IF NOT EXISTS) before
    reading it: a write, refused on a standby. A missing table means nothing
    applied.
    """
    if db.execute_sql("SELECT to_regclass(%s)", (MIGRATE_TABLE,)).fetchone()[0] is None:
        return []
    return [name for (name,) in db.execute_sql(f'SELECT name FROM "{MIGRATE_TABLE}" ORDER BY id').fetchall()]


def run_migrations(url: str | None = None) -> list[str]:
    """Apply pending migrations; returns the names applied.

    With ``url``, a private one-connection pool is used and closed; without,
    the module-level connection (initialized from the environment if needed).
    Raises ``ReadOnlyError`` before changing anything when the server is a
    standby (``pg_is_in_recovery()``).
    """
    if url is None:
        if not db_connection.is_initialized:
            db_connection.initialize()
        return DatabaseMigration(db_connection).migrate()
    connection = DatabaseConnection().initialize(url, pool_size=1, max_overflow=0)
    try:
        return DatabaseMigration(connection).migrate()
    finally:
        connection.close()


def grant_application_role(role: str, connection: DatabaseConnection | None = None,
                           create: bool = False) -> None:
    """Give ``role`` exactly the row privileges the repositories need (``sql/roles.sql``).

    Run as the owner of the tables. With ``create``, a missing role is created
    (``LOGIN``, no password: set one with ALTER ROLE). Raises ``QueryError`` if
    the role does not exist, and ``DataValidationError`` for an unusable name.
    """
    from importlib.resources import files

    from psycopg2 import sql

    from .errors import DataValidationError

    if not isinstance(role, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$-]{0,62}", role):
        raise DataValidationError("role", role, "a PostgreSQL role name (letters, digits, _ $ -)")
    script = files("marketstore").joinpath("sql/roles.sql").read_text()
    connection = connection or db_connection
    with connection.session("grant") as db:
        conn = db.connection()
        name = sql.Identifier(role).as_string(conn)
        if create:
            exists = db.execute_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                db.execute_sql(f"CREATE ROLE {name} LOGIN")
        statements = re.sub(r"--[^\n]*", "", script).replace(':"app_role"', name)
        for statement in filter(str.strip, statements.split(";")):
            db.execute_sql(statement)
