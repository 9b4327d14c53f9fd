"""The scale-out settings: validated once, named in errors, passwords never shown."""
from __future__ import annotations

import pytest

from marketstore import ConfigurationError, load_settings

URL = "postgresql://app:primary-pw@db:5432/market"


@pytest.mark.parametrize("options, environ, expected", [
    ({}, {}, (None, (), 1.0)),
    ({"pooler": "transaction"}, {}, ("transaction", (), 1.0)),
    ({}, {"MARKETSTORE_POOLER": "Transaction"}, ("transaction", (), 1.0)),
    ({}, {"MARKETSTORE_POOLER": ""}, (None, (), 1.0)),
    ({}, {"MARKETSTORE_REPLICA_URLS": "postgresql://r1/market, postgresql://r2:5433/market"},
     (None, ("postgresql://r1/market", "postgresql://r2:5433/market"), 1.0)),
    ({"replica_urls": ["postgresql://r1/market"], "max_replica_lag": 0.25}, {},
     (None, ("postgresql://r1/market",), 0.25)),
    ({}, {"MARKETSTORE_MAX_REPLICA_LAG": "5"}, (None, (), 5.0)),
])
def test_scale_out_settings(options, environ, expected):
    settings = load_settings(URL, environ=environ, **options)
    assert (settings.pooler, settings.replica_urls, settings.max_replica_lag) == expected


@pytest.mark.parametrize("options, environ, named", [
    ({"pooler": "session"}, {}, "pooler='session'"),
    ({}, {"MARKETSTORE_POOLER": "statement"}, "MARKETSTORE_POOLER"),
    ({"max_replica_lag": 0}, {}, "max_replica_lag"),
    ({}, {"MARKETSTORE_MAX_REPLICA_LAG": "soon"}, "MARKETSTORE_MAX_REPLICA_LAG"),
    ({"replica_urls": ["mysql://replica-pw@r1/x"]}, {}, "replica_urls #1"),
    ({}, {"MARKETSTORE_REPLICA_URLS": "postgresql://r1/x,http://u:replica-pw@r2"}, "MARKETSTORE_REPLICA_URLS #2"),
    ({"replica_urls": 5}, {}, "replica_urls"),
    ({"pooler": "transaction", "replica_urls": ["postgresql://r1/x?options=-c%20a%3D1"]}, {}, "replica URL #1"),
])
def test_bad_scale_out_settings_are_named_without_passwords(options, environ, named):
    with pytest.raises(ConfigurationError) as caught:
        load_settings(URL, environ=environ, **options)
    assert named in str(caught.value)
    assert "pw" not in str(caught.value)


def test_options_in_the_url_are_refused_with_a_pooler():
    with pytest.raises(ConfigurationError, match="options"):
        load_settings(URL + "?options=-c%20search_path%3Dx", pooler="transaction")
    assert load_settings(URL + "?options=-c%20search_path%3Dx").connect_params["options"]


def test_repr_masks_replica_passwords():
    settings = load_settings(URL, replica_urls=["postgresql://app:replica-pw@r1:5432/market"])
    shown = repr(settings)
    assert "replica-pw" not in shown and "primary-pw" not in shown
    assert "postgresql://app:***@r1:5432/market" in shown
    assert settings.for_replica(settings.replica_urls[0]).connect_params["host"] == "r1"


def test_read_only_sqlstates_translate_to_read_only_error():
    import psycopg2.errors

    from marketstore import QueryError, ReadOnlyError
    from marketstore.errors import translate

    class Fake(psycopg2.errors.ReadOnlySqlTransaction):  # the driver's class for SQLSTATE 25006
        pgcode = "25006"

    assert type(translate(Fake("cannot execute INSERT in a read-only transaction"), "create Price")) is ReadOnlyError

    class Recovery(psycopg2.errors.FeatureNotSupported):
        pgcode = "0A000"

    assert type(translate(Recovery("cannot execute X during recovery"))) is ReadOnlyError
    assert type(translate(Recovery("window functions are not allowed here"), "recovery report")) is QueryError
