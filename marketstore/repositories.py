"""The seven specialised repositories: each holds only its own queries.

CRUD is inherited from :class:`~marketstore.repository.BaseRepository`.
"""
from __future__ import annotations

from .models import (
    Article,
    BacktestResult,
    Event,
    Order,
    Price,
    SentimentScore,
    TradingSignal,
)
from .repository import BaseRepository


class PriceRepository(BaseRepository[Price]):
    """OHLCV bars."""

    model = Price


class ArticleRepository(BaseRepository[Article]):
    """News articles."""

    model = Article


class SentimentScoreRepository(BaseRepository[SentimentScore]):
    """Sentiment scores of articles."""

    model = SentimentScore


class EventRepository(BaseRepository[Event]):
    """Market events."""

    model = Event


class TradingSignalRepository(BaseRepository[TradingSignal]):
    """Trading signals."""

    model = TradingSignal


class OrderRepository(BaseRepository[Order]):
    """Orders and their audit trail."""

    model = Order


class BacktestResultRepository(BaseRepository[BacktestResult]):
    """Stored backtest results."""

    model = BacktestResult
