"""Fixtures: every test session gets a brand-new database on a real PostgreSQL.

The server is ``MARKETSTORE_TEST_DATABASE_URL`` when set, else the embedded one
(pgserver). Each test starts from empty tables; writes are checked from a
separate raw psycopg2 connection, never through the code under test.
"""
from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

import marketstore
from marketstore import PriceRepository

from helpers import autocommit_connection, initialized


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (query parameters such as host kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get("MARKETSTORE_TEST_DATABASE_URL")
    if url:
        return url
    from marketstore.embedded import embedded_url

    return embedded_url()


@pytest.fixture(scope="session")
def create_database(server_url):
    """Factory: a new empty database on the test server, dropped at session end."""
    created = []

    def create() -> str:
        name = f"marketstore_test_{uuid.uuid4().hex[:12]}"
        admin = psycopg2.connect(server_url)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        admin.close()
        created.append(name)
        return with_database(server_url, name)

    yield create
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(scope="session")
def database_url(create_database) -> str:
    """The session's database, migrated once."""
    url = create_database()
    marketstore.run_migrations(url)
    return url


@pytest.fixture
def raw(database_url):
    """A raw autocommit psycopg2 connection, independent of the pool under test."""
    with autocommit_connection(database_url) as conn:
        yield conn


@pytest.fixture
def db(database_url):
    """``marketstore.db_connection`` initialized on empty tables; closed afterwards."""
    with initialized(database_url) as connection:
        yield connection



@pytest.fixture
def prices(db):
    """A ``PriceRepository`` on the initialized ``db``."""
    return PriceRepository()
