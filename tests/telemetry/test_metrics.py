"""Metrics by the database-client conventions: the operation duration, and each pool's state and waits."""
from __future__ import annotations

import threading

import marketstore
from marketstore import PoolExhaustedError, PriceRepository, telemetry

from helpers import bar, server_of

UNITS = {
    "db.client.operation.duration": "s",
    "db.client.connection.count": "{connection}",
    "db.client.connection.idle.max": "{connection}",
    "db.client.connection.max": "{connection}",
    "db.client.connection.pending_requests": "{request}",
    "db.client.connection.wait_time": "s",
    "db.client.connection.create_time": "s",
    "db.client.connection.use_time": "s",
}


def pool_name(url: str) -> str:
    host, port, database = server_of(url)
    return f"{host}:{port}/{database}"


def test_names_units_and_the_duration_buckets(traced, otel):
    PriceRepository().create(**bar("AAPL", 0))
    metrics = otel.metrics()
    assert {name: metrics[name].unit for name in UNITS if name in metrics} == UNITS
    points = otel.points("db.client.operation.duration", db__query__summary="INSERT prices")
    assert len(points) == 1 and points[0].count == 1
    assert tuple(points[0].explicit_bounds) == telemetry.DURATION_BUCKETS == (
        0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
    assert 0 < points[0].sum < 10


def test_a_repository_call_and_its_statement_each_have_a_duration(traced, otel, database_url):
    PriceRepository().count()
    (call,) = otel.points("db.client.operation.duration", db__operation__name="count")
    host, port, database = server_of(database_url)
    assert dict(call.attributes) == {"db.system.name": "postgresql", "db.namespace": database,
                                     "server.address": host, "server.port": port,
                                     "db.operation.name": "count", "db.collection.name": "prices"}
    (statement,) = otel.points("db.client.operation.duration", db__operation__name="SELECT")
    assert statement.attributes["db.query.summary"] == "SELECT prices"
    assert call.sum >= statement.sum


def test_connection_counts_are_the_pool_status(traced, otel, database_url):
    name = pool_name(database_url)
    with marketstore.get_db_session():
        status = traced.pool_status()
        used = otel.points("db.client.connection.count", db__client__connection__pool__name=name,
                           db__client__connection__state="used")
        idle = otel.points("db.client.connection.count", db__client__connection__pool__name=name,
                           db__client__connection__state="idle")
    assert status["in_use"] >= 1
    assert (used[0].value, idle[0].value) == (status["in_use"], status["idle"])
    settings = traced.settings
    (idle_max,) = otel.points("db.client.connection.idle.max", db__client__connection__pool__name=name)
    (most,) = otel.points("db.client.connection.max", db__client__connection__pool__name=name)
    assert (idle_max.value, most.value) == (settings.pool_size, settings.pool_size + settings.max_overflow)


def test_wait_create_and_use_times_are_recorded_per_checkout(traced, otel, database_url):
    for _ in range(3):
        with marketstore.get_db_session() as db:
            db.execute_sql("SELECT 1")
    attributes = {"db__client__connection__pool__name": pool_name(database_url)}
    (wait,) = otel.points("db.client.connection.wait_time", **attributes)
    (use,) = otel.points("db.client.connection.use_time", **attributes)
    (create,) = otel.points("db.client.connection.create_time", **attributes)
    assert wait.count == use.count == 3
    assert create.count == 1  # one connection, opened once and reused
    assert use.sum > 0 and create.sum > 0


def test_a_checkout_that_times_out_is_counted_and_waits_are_pending(otel, database_url):
    connection = marketstore.DatabaseConnection().initialize(database_url, telemetry="on", pool_size=1,
                                                            max_overflow=0, pool_timeout=1)
    name = {"db__client__connection__pool__name": pool_name(database_url)}
    held, release = threading.Event(), threading.Event()

    def hold():
        with connection.session():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(10)
        errors = []

        def wait():
            try:
                with connection.session():
                    pass
            except PoolExhaustedError as exc:
                errors.append(exc)

        waiter = threading.Thread(target=wait)
        waiter.start()
        pending = []
        for _ in range(50):  # while it waits for the held connection
            pending = [p.value for p in otel.points("db.client.connection.pending_requests", **name)]
            if pending == [1]:
                break
            threading.Event().wait(0.01)
        waiter.join()
        assert pending == [1] and len(errors) == 1
        (timeouts,) = otel.points("db.client.connection.timeouts", **name)
        assert timeouts.value == 1
    finally:
        release.set()
        holder.join()
        connection.close()


def test_the_primary_and_each_replica_have_their_own_pool_name_until_closed(otel, database_url):
    replica = f"postgresql://postgres@replica-host:6543/{server_of(database_url)[2]}"  # never connected to
    connection = marketstore.DatabaseConnection().initialize(database_url, telemetry="on", replica_urls=[replica])
    try:
        names = {p.attributes["db.client.connection.pool.name"]: p.value
                 for p in otel.points("db.client.connection.max")}
        assert names == {pool_name(database_url): 30, pool_name(replica): 30}
        assert pool_name(replica) != pool_name(database_url)
        assert all("@" not in name for name in names)  # no user, no password
    finally:
        connection.close()
    assert otel.points("db.client.connection.max") == []
