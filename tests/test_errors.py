"""Where an error says it happened, and how a missing extra is reported. No database needed."""
from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

import pytest

import marketstore
from marketstore.errors import DataValidationError, DuplicateKeyError, MissingExtraError, location
from marketstore.extras import require

PACKAGE = Path(marketstore.__file__).parent


@pytest.mark.parametrize("where, expected", [
    ({}, ""),
    ({"source": "bars.csv"}, "bars.csv"),
    ({"source": "bars.csv", "line": 4}, "bars.csv, line 4"),
    ({"row": 3}, "row 3"),
    ({"source": "bars.parquet", "row": 3}, "bars.parquet, row 3"),
    ({"line": 1, "field": "header"}, "line 1, field 'header'"),
    ({"field": "close"}, "field 'close'"),
])
def test_location_names_file_line_row_and_field_in_that_order(where, expected):
    assert location(**where) == expected


def test_errors_say_where_with_location():
    error = DataValidationError("close", "x", "a number", source="bars.csv", line=4)
    assert error.location == "bars.csv, line 4"
    assert str(error) == "bars.csv, line 4: close='x': expected a number"
    assert str(error.at(line=5)).startswith("bars.csv, line 5: close=")
    assert str(DataValidationError("close", "x", "a number")) == "close='x': expected a number"
    duplicate = DuplicateKeyError({"symbol": "AAA", "interval": "1m"}, row=2)
    assert duplicate.location == "row 2"
    assert str(duplicate).startswith("row 2: the key (symbol, interval)=(AAA, 1m) is already stored")


def test_require_returns_the_module():
    import json

    assert require("json", "frames") is json


def test_require_names_the_extra_and_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # what an import sees when it is missing
    with pytest.raises(MissingExtraError) as caught:
        require("pyarrow.parquet", "frames")
    error = caught.value
    assert (error.extra, error.module) == ("frames", "pyarrow.parquet")
    assert "pip install 'marketstore[frames]'" in str(error) and "pyarrow.parquet" in str(error)
    assert isinstance(error, ImportError) and isinstance(error, marketstore.MarketstoreError)
    assert isinstance(error.__cause__, ImportError)


def test_require_adds_another_way_out(monkeypatch):
    monkeypatch.setitem(sys.modules, "pgserver", None)
    with pytest.raises(MissingExtraError, match=r"marketstore\[embedded\]'?, or set MARKETSTORE_DATABASE_URL"):
        require("pgserver", "embedded", otherwise="set MARKETSTORE_DATABASE_URL to a PostgreSQL server")


def test_the_plot_and_embedded_defaults_say_a_missing_extra_the_one_way(monkeypatch):
    from marketstore import embedded
    from marketstore.cli.plotting import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "pgserver", None)
    with pytest.raises(MissingExtraError) as plot:
        require_matplotlib()
    with pytest.raises(MissingExtraError) as server:
        embedded.embedded_url()
    assert (plot.value.extra, server.value.extra) == ("plot", "embedded")
    assert isinstance(plot.value, marketstore.errors.PlotUnavailable)  # the older name still catches it


def test_every_extra_the_package_requires_is_declared_in_setup_cfg():
    setup = configparser.ConfigParser()
    setup.read(PACKAGE.parent / "setup.cfg")
    declared = set(setup["options.extras_require"])
    calls = re.compile(r"""\brequire\(\s*["']([\w.]+)["']\s*,\s*["'](\w+)["']""")
    named = {(path.name, extra) for path in PACKAGE.rglob("*.py") for _, extra in calls.findall(path.read_text())}
    assert {extra for _, extra in named} >= {"frames", "plot", "embedded"}
    assert {(name, extra) for name, extra in named if extra not in declared} == set()
