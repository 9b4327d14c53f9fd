"""``BacktestResultRepository``: stored backtests, ranked by their metrics."""
from __future__ import annotations

from .. import validation as check
from ..errors import DataValidationError
from ..models import BacktestResult, config_hash
from ..repository import BaseRepository, reads
from ._sql import MAX_QUERY_TEXT

_BACKTEST_COLUMNS = ", ".join(f'"{f.column_name}"' for f in BacktestResult._meta.sorted_fields)
_HAS_NUMBER = "(metrics ? %s AND jsonb_typeof(metrics -> %s) = 'number')"


class BacktestResultRepository(BaseRepository[BacktestResult]):
    """Stored backtest results."""

    model = BacktestResult

    @reads
    def best_by_metric(self, metric: str, limit: int = 10, descending: bool = True) -> list[BacktestResult]:
        """The ``limit`` best results by the numeric value of ``metrics[metric]``.

        Ordered numerically (10 > 9 > 1.5), highest first unless
        ``descending=False``; ties newest first. Results whose metric is
        missing or not a number come after all others, newest first. The
        metric name is a bound parameter. The key test (``metrics ? name``) is
        served by the GIN index on ``metrics`` when few results have the metric;
        when most do, every row must be read to rank them (no index can order by
        a key chosen at query time).
        """
        metric, limit = check.required_text("metric", metric, MAX_QUERY_TEXT), check.limit(limit)
        check.flag("descending", descending)
        direction = "DESC" if descending else "ASC"
        ranked = (f"SELECT {_BACKTEST_COLUMNS} FROM backtest_results WHERE {_HAS_NUMBER} "
                  f"ORDER BY (metrics ->> %s)::numeric {direction}, created_at DESC, id DESC LIMIT %s")
        # Two statements, each index-friendly: a UNION ALL would need an outer
        # ORDER BY to keep its order, and that would run both halves in full.
        rest = (f"SELECT {_BACKTEST_COLUMNS} FROM backtest_results WHERE NOT {_HAS_NUMBER} "
                "ORDER BY created_at DESC, id DESC LIMIT %s")
        with self.session("best_by_metric"):
            found = list(BacktestResult.raw(ranked, metric, metric, metric, limit))
            if len(found) < limit:
                found += list(BacktestResult.raw(rest, metric, metric, limit - len(found)))
        return found

    @reads
    def recent(self, limit: int = 10) -> list[BacktestResult]:
        """The ``limit`` most recently created results, newest first."""
        limit = check.limit(limit)
        query = BacktestResult.select().order_by(BacktestResult.created_at.desc(), BacktestResult.id.desc())
        with self.session("recent"):
            return list(query.limit(limit))

    @reads
    def find_by_config(self, config, *, limit: int = 100) -> list[BacktestResult]:
        """The ``limit`` newest results run with ``config`` (equal as JSON: key order and whitespace ignored)."""
        limit = check.limit(limit)
        try:
            digest = config_hash(config)
        except (TypeError, ValueError) as exc:
            raise DataValidationError("config", config, f"a JSON-serialisable document ({exc})") from None
        query = (BacktestResult.select().where(BacktestResult.config_hash == digest)
                 .order_by(BacktestResult.created_at.desc(), BacktestResult.id.desc()))
        with self.session("find_by_config"):
            return list(query.limit(limit))
