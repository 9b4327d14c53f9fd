"""Fixtures of the connection-layer tests."""
from __future__ import annotations

import uuid

import pytest

from marketstore import DatabaseConnection


@pytest.fixture
def pool(database_url):
    """Factory: a private pool on the session database (its own application_name), closed afterwards."""
    opened = []

    def pool(**options) -> DatabaseConnection:
        conn = DatabaseConnection().initialize(
            database_url, application_name=f"mst_pool_{uuid.uuid4().hex[:8]}", **options)
        opened.append(conn)
        return conn

    yield pool
    for conn in opened:
        conn.close()
