"""The seven specialised repositories, one module per aggregate; each holds only its own queries.

CRUD is inherited from :class:`~marketstore.repository.BaseRepository`. Every
method validates its parameters before touching the database (raising
:class:`~marketstore.errors.DataValidationError` naming the parameter and
value), runs in ``self.session(...)`` so callers can compose several calls
into one ``get_db_session()`` transaction, and sends every value as a bound
parameter. Parameters after a method's subject are keyword-only except where
SPEC fixes their position.

* :mod:`.prices` -- ``PriceRepository`` (its bulk sources: :mod:`._rows`, :mod:`._csv`, :mod:`._frames`, through :mod:`._copy`);
* :mod:`.news` -- ``ArticleRepository``, ``SentimentScoreRepository``, ``EventRepository``;
* :mod:`.trading` -- ``TradingSignalRepository``, ``OrderRepository``;
* :mod:`.backtests` -- ``BacktestResultRepository``.
"""
from ..models import PRICE_COLUMNS
from ._csv import PRICE_HEADER
from ._sql import BUCKET_ORIGIN
from .backtests import BacktestResultRepository
from .news import ArticleRepository, EventRepository, SentimentBucket, SentimentScoreRepository
from ._load import UpsertCount
from ._price_rows import PRICE_ROW_COLUMNS
from ._sentiment_join import SentimentWindow
from .prices import PriceBar, PriceRepository, PriceSeries
from .trading import FILL_STATUSES, OPEN_STATUSES, ORDER_MOVES, OrderRepository, TradingSignalRepository

__all__ = [
    "ArticleRepository", "BacktestResultRepository", "EventRepository", "OrderRepository", "PriceRepository",
    "SentimentScoreRepository", "TradingSignalRepository",
    "PriceBar", "PriceSeries", "UpsertCount", "SentimentBucket", "SentimentWindow",
    "BUCKET_ORIGIN", "FILL_STATUSES", "OPEN_STATUSES", "ORDER_MOVES", "PRICE_COLUMNS", "PRICE_HEADER",
    "PRICE_ROW_COLUMNS",
]
