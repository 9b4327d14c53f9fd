"""marketstore: the PostgreSQL data layer of a market-sentiment trading system."""
import logging as _logging

from . import errors
from .aio import AsyncSession, async_session, get_async_db_session
from .config import Settings, load_settings
from .connection import (
    DatabaseConnection,
    Session,
    close_database,
    db_connection,
    get_db_session,
    initialize_database,
    retry_transaction,
)
from .database import PooledPostgresqlExtDatabase
from .errors import (
    ConfigurationError,
    DatabaseConnectionError,
    DataValidationError,
    DuplicateKeyError,
    IntegrityViolation,
    MarketstoreError,
    MissingExtraError,
    NotFoundError,
    PoolExhaustedError,
    QueryError,
    ReadOnlyError,
    SerializationFailure,
    TransactionError,
)
from .models import (
    Article,
    BacktestResult,
    BaseModel,
    Event,
    Order,
    OrderEvent,
    Price,
    SentimentScore,
    TradingSignal,
    database_proxy,
)
from .repository import BaseRepository
from .repositories import (
    ArticleRepository,
    BacktestResultRepository,
    EventRepository,
    OrderRepository,
    PriceBar,
    PriceSeries,
    UpsertCount,
    PriceRepository,
    SentimentBucket,
    SentimentScoreRepository,
    SentimentWindow,
    TradingSignalRepository,
)
from .migrations import DatabaseMigration, run_migrations

__all__ = [
    # connection layer and configuration
    "DatabaseConnection", "db_connection", "get_db_session", "initialize_database", "close_database",
    "AsyncSession", "async_session", "get_async_db_session",
    "retry_transaction", "Settings", "load_settings", "Session", "PooledPostgresqlExtDatabase",
    # errors (the module, and its classes)
    "errors", "MarketstoreError", "ConfigurationError", "DatabaseConnectionError", "PoolExhaustedError",
    "TransactionError", "IntegrityViolation", "DuplicateKeyError", "SerializationFailure", "QueryError",
    "NotFoundError", "ReadOnlyError", "DataValidationError", "MissingExtraError",
    # models
    "database_proxy", "BaseModel", "Price", "Article", "SentimentScore", "Event", "TradingSignal", "Order",
    "OrderEvent", "BacktestResult",
    # repositories and the types they return
    "BaseRepository", "PriceRepository", "ArticleRepository", "SentimentScoreRepository", "EventRepository",
    "TradingSignalRepository", "OrderRepository", "BacktestResultRepository", "PriceBar", "PriceSeries",
    "UpsertCount", "SentimentBucket", "SentimentWindow",
    # migrations
    "DatabaseMigration", "run_migrations",
]

# A library does not configure logging; without this, Python's last-resort
# handler would print our ERROR records to stderr of every application.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
