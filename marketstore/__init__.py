"""marketstore: the PostgreSQL data layer of a market-sentiment trading system."""
import logging as _logging

from .config import Settings, load_settings
from .connection import (
    DatabaseConnection,
    close_database,
    db_connection,
    get_db_session,
    initialize_database,
    retry_transaction,
)
from .errors import (
    ConfigurationError,
    DatabaseConnectionError,
    DataValidationError,
    IntegrityViolation,
    MarketstoreError,
    NotFoundError,
    PoolExhaustedError,
    QueryError,
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
    PriceRepository,
    SentimentScoreRepository,
    TradingSignalRepository,
)
from .migrations import DatabaseMigration, run_migrations

# A library does not configure logging; without this, Python's last-resort
# handler would print our ERROR records to stderr of every application.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())
