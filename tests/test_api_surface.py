"""The public surface: what ``import marketstore`` exports, which parameters are keyword-only,
and that every exception the package raises is a ``MarketstoreError``. No database needed."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import click
import pytest

import marketstore
from marketstore import MarketstoreError
from marketstore.repositories import __all__ as REPOSITORY_EXPORTS

PACKAGE = Path(marketstore.__file__).parent

# SPEC's signatures (Repositories section): these parameters keep their positions;
# anything else a public method takes must be keyword-only.
POSITIONAL = {
    "BaseRepository": {"create": [], "get_by_id": ["id"], "get": ["id"], "list": ["limit", "after_id"],
                       "update": ["id"], "delete": ["id"], "count": [], "bulk_create": ["rows", "batch_size"],
                       "exists": [], "session": ["operation"]},
    "PriceRepository": {"get_range": ["symbol", "start", "end", "interval"], "latest": ["symbol", "interval"],
                        "latest_for_symbols": ["symbols", "interval"], "upsert_many": ["rows_or_csv_path"],
                        "copy_from": ["rows_or_csv_path"], "resample": ["symbol", "start", "end", "bucket"],
                        "symbols": [], "delete_before": ["ts"], "frame": ["symbols", "start", "end"],
                        "series": ["symbols"]},
    "ArticleRepository": {"for_symbol": ["symbol", "since", "limit"], "recent": ["limit"],
                          "search": ["text", "limit"], "create_if_new": ["url"],
                          "copy_from": ["rows_or_jsonl_path"]},
    "SentimentScoreRepository": {"for_article": ["article_id"], "average_for_symbol": ["symbol", "start", "end"],
                                 "timeseries": ["symbol", "start", "end", "bucket"],
                                 "frame": ["symbols", "start", "end"]},
    "EventRepository": {"recent": ["min_severity", "since", "limit"], "by_type": ["event_type", "since"],
                        "for_symbol": ["symbol", "since"]},
    "TradingSignalRepository": {"latest": ["symbol"], "by_type": ["signal_type", "since"],
                                "in_range": ["symbol", "start", "end"], "recent": ["limit"]},
    "OrderRepository": {"get_by_order_id": ["order_id"], "by_status": ["status"], "open_orders": ["symbol"],
                        "for_signal": ["signal_id"],
                        "transition": ["order_id", "new_status", "filled_quantity", "average_fill_price"],
                        "history": ["order_id"]},
    "BacktestResultRepository": {"best_by_metric": ["metric", "limit", "descending"], "recent": ["limit"],
                                 "find_by_config": ["config"]},
}
METHODS = [(owner, name) for owner, methods in POSITIONAL.items() for name in methods]


def _public_methods(cls) -> set[str]:
    return {name for name, value in vars(cls).items() if inspect.isfunction(value) and not name.startswith("_")
            and not getattr(value, "_marketstore_twin", False)}  # an a-twin is its sync method's


@pytest.mark.parametrize("owner", POSITIONAL)
def test_every_public_method_is_listed(owner):
    assert _public_methods(getattr(marketstore, owner)) == set(POSITIONAL[owner])


@pytest.mark.parametrize("owner, name", METHODS, ids=[f"{o}.{n}" for o, n in METHODS])
def test_parameters_beyond_spec_are_keyword_only(owner, name):
    parameters = list(inspect.signature(getattr(getattr(marketstore, owner), name)).parameters.values())[1:]
    positional = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert positional == POSITIONAL[owner][name]
    assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in parameters)


def test_a_keyword_only_parameter_given_by_position_is_refused():
    prices = marketstore.PriceRepository()
    with pytest.raises(TypeError):
        prices.upsert_many([], 10)  # batch_size
    with pytest.raises(TypeError):
        prices.resample("AAA", "2024-01-01", "2024-01-02", "1 hour", "1m")  # interval
    with pytest.raises(TypeError):
        marketstore.OrderRepository().by_status("pending", "AAPL")  # symbol
    with pytest.raises(TypeError):
        marketstore.EventRepository().by_type("earnings", None, 5)  # limit


def test_all_names_the_public_api_and_every_returned_type():
    exported = set(marketstore.__all__)
    assert len(exported) == len(marketstore.__all__)
    assert all(not name.startswith("_") and hasattr(marketstore, name) for name in exported)
    assert {"DatabaseConnection", "db_connection", "get_db_session", "initialize_database", "close_database",
            "retry_transaction", "Settings", "load_settings", "errors", "PriceBar", "SentimentBucket",
            "OrderEvent", "DuplicateKeyError", "DataValidationError", "run_migrations"} <= exported
    assert set(REPOSITORY_EXPORTS) <= set(dir(marketstore.repositories))
    repositories = {name for name in exported if name.endswith("Repository")} - {"BaseRepository"}
    assert len(repositories) == 7
    # Every class a public method says it returns is importable from marketstore.
    for owner in repositories:
        for name in _public_methods(getattr(marketstore, owner)):
            returned = inspect.signature(getattr(getattr(marketstore, owner), name)).return_annotation
            for word in set(re.findall(r"[A-Z]\w+", str(returned))) - {"None"}:
                assert word in exported, f"{owner}.{name} returns {word}, which marketstore does not export"


# -- every exception is a MarketstoreError ----------------------------------------------

def _modules():
    for info in pkgutil.walk_packages([str(PACKAGE)], "marketstore."):
        if not info.name.startswith("marketstore._migrations") and not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_every_exception_class_the_package_defines_is_a_marketstore_error():
    defined = [value for module in _modules() for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__]
    assert len(defined) > 10
    assert [cls for cls in defined if not issubclass(cls, MarketstoreError)] == []


def test_every_exception_class_is_defined_in_errors():
    defined = [f"{value.__module__}.{value.__name__}" for module in _modules() for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__]
    assert [name for name in defined if not name.startswith("marketstore.errors.")] == []


ALLOWED = {
    ("marketstore.cli.output", "TypeError"),  # json.dumps' default= hook must raise TypeError
    # The pooled database keeps Peewee's contract for plain Peewee code (closing inside a
    # transaction, an uninitialized database); sessions translate at their boundary.
    ("marketstore.database", "OperationalError"),
    ("marketstore.database", "InterfaceError"),
}


def _raised(module):
    """(name of the raised class, line) of every ``raise X(...)`` / ``raise X`` naming a class in ``module``."""
    tree = ast.parse(Path(module.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, (ast.Name, ast.Attribute)):
                yield ast.unparse(target), node.lineno


def _resolve(module, dotted: str):
    value = module
    for part in dotted.split("."):
        value = getattr(value, part, None)
    return value


def test_every_exception_the_package_raises_is_a_marketstore_error():
    wrong = []
    for module in _modules():
        for name, line in _raised(module):
            cls = _resolve(module, name)
            if not isinstance(cls, type):  # a variable: re-raising what was caught or kept
                continue
            if module.__name__.startswith("marketstore.cli") and issubclass(cls, click.ClickException):
                continue  # the CLI edge: library errors become click's one-line errors
            if not issubclass(cls, MarketstoreError) and (module.__name__, cls.__name__) not in ALLOWED:
                wrong.append(f"{module.__name__}:{line} raises {name}")
    assert wrong == []


def test_the_cli_turns_only_marketstore_errors_into_one_line():
    source = (PACKAGE / "cli" / "common.py").read_text()
    caught = re.findall(r"except \(?([\w., ]+)\)? as exc:\n\s+raise click.ClickException\(hint", source)
    assert caught == ["MarketstoreError"]


def test_no_module_imports_another_module_s_private_name():
    private = re.compile(r"^from \.+[\w.]* import .*\b_\w+", re.MULTILINE)
    found = [f"{path.relative_to(PACKAGE)}: {m.group(0)}" for path in PACKAGE.rglob("*.py")
             for m in private.finditer(path.read_text()) if "__future__" not in m.group(0)]
    assert found == []


def test_no_module_is_over_450_lines():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    assert {name: size for name, size in sizes.items() if size > 450} == {}


def test_the_readme_layout_names_every_module():
    layout = (PACKAGE.parent / "README.md").read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    modules = [path for path in PACKAGE.rglob("*.py")
               if not path.name.startswith("__") and "_migrations" not in path.parts]
    # A module is named by its file (`pool.py`, `marketstore/pool.py`) or, for a command group, its stem.
    missing = [str(path.relative_to(PACKAGE)) for path in modules
               if not any(f"{name}`" in layout for name in (f"`{path.name}", f"/{path.name}", f"`{path.stem}"))]
    assert missing == []
