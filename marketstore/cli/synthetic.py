"""A seeded synthetic market week, generated without a database (for ``marketstore demo``).

From a seed, :func:`generate` builds 24 symbols x 5 trading days of 1-minute
bars (a geometric random walk with a market factor, overnight gaps and news
shocks), a few hundred articles with a sentiment score each, events, signals
from sentiment and momentum, order plans and backtests of a signal strategy.
"""
from __future__ import annotations

import datetime as dt
import math
import random
from dataclasses import dataclass, field
from decimal import Decimal

UTC = dt.timezone.utc
SEED = 42
# Mon 4 - Fri 8 March 2024, before the US switch to summer time: NYSE 09:30-16:00 EST
# is 14:30-21:00 UTC every day.
FIRST_DAY = dt.date(2024, 3, 4)
DAYS = 5
SESSION_OPEN = dt.time(14, 30)
SESSION_MINUTES = 390
INTERVAL = "1m"
URL_PREFIX = "https://news.example.com/marketstore-demo/"
ORDER_PREFIX = "demo-"
SCORER = "demo-lexicon-v1"
MINUTES_PER_YEAR = 252 * SESSION_MINUTES

# ticker: (name, sector, first price, annual volatility, beta to the market, news weight)
SYMBOLS: dict[str, tuple[str, str, float, float, float, float]] = {
    "AAPL": ("Apple", "tech", 172.0, 0.24, 1.1, 4.0),
    "MSFT": ("Microsoft", "tech", 410.0, 0.22, 1.0, 2.0),
    "NVDA": ("Nvidia", "chips", 860.0, 0.50, 1.7, 3.0),
    "AMD": ("AMD", "chips", 205.0, 0.48, 1.6, 1.5),
    "INTC": ("Intel", "chips", 43.0, 0.35, 1.2, 1.0),
    "GOOGL": ("Alphabet", "tech", 135.0, 0.28, 1.1, 2.0),
    "META": ("Meta Platforms", "tech", 500.0, 0.35, 1.3, 2.0),
    "AMZN": ("Amazon", "retail", 178.0, 0.30, 1.2, 2.0),
    "TSLA": ("Tesla", "autos", 180.0, 0.55, 1.8, 3.0),
    "NFLX": ("Netflix", "media", 605.0, 0.38, 1.2, 1.0),
    "DIS": ("Walt Disney", "media", 112.0, 0.26, 1.0, 1.0),
    "JPM": ("JPMorgan Chase", "banks", 190.0, 0.22, 1.0, 1.5),
    "BAC": ("Bank of America", "banks", 36.0, 0.26, 1.1, 1.0),
    "V": ("Visa", "payments", 280.0, 0.18, 0.9, 1.0),
    "MA": ("Mastercard", "payments", 475.0, 0.19, 0.9, 0.8),
    "JNJ": ("Johnson & Johnson", "health", 158.0, 0.15, 0.6, 1.0),
    "PFE": ("Pfizer", "health", 27.0, 0.25, 0.7, 1.0),
    "XOM": ("Exxon Mobil", "energy", 110.0, 0.24, 0.8, 1.0),
    "CVX": ("Chevron", "energy", 153.0, 0.24, 0.8, 0.8),
    "WMT": ("Walmart", "retail", 60.0, 0.17, 0.6, 1.0),
    "KO": ("Coca-Cola", "staples", 60.0, 0.14, 0.5, 0.6),
    "PEP": ("PepsiCo", "staples", 165.0, 0.15, 0.5, 0.6),
    "BA": ("Boeing", "industrials", 195.0, 0.38, 1.2, 1.5),
    "CAT": ("Caterpillar", "industrials", 335.0, 0.28, 1.1, 0.8),
}
PRODUCTS = {"tech": "cloud", "chips": "data-center chip", "retail": "online retail", "autos": "electric vehicle",
            "media": "streaming", "banks": "lending", "payments": "cross-border payments", "health": "drug",
            "energy": "oil and gas", "staples": "beverage", "industrials": "aircraft and machinery"}

# (polarity, event type or None, headline, keywords)
HEADLINES = [
    (1, "earnings", "{name} beats quarterly earnings estimates on strong {product} demand", ["beats", "strong demand"]),
    (1, "guidance", "{name} raises full-year guidance", ["raises guidance"]),
    (1, "analyst_rating", "Analysts upgrade {name} to buy, citing margin expansion", ["upgrade", "margin expansion"]),
    (1, "product_launch", "{name} unveils new {product} offering to upbeat reviews", ["unveils", "upbeat"]),
    (1, "buyback", "{name} announces a $10 billion share buyback", ["buyback"]),
    (1, None, "{name} shares climb as investors cheer {product} growth", ["climb", "growth"]),
    (-1, "earnings", "{name} misses revenue expectations as {product} sales slow", ["misses", "sales slow"]),
    (-1, "guidance", "{name} cuts outlook, warns of weaker demand", ["cuts outlook", "weaker demand"]),
    (-1, "analyst_rating", "{name} downgraded to sell on valuation concerns", ["downgraded", "valuation concerns"]),
    (-1, "regulatory", "Regulators open a probe into {name}'s {product} business", ["probe", "regulators"]),
    (-1, "legal", "{name} hit with lawsuit over {product} practices", ["lawsuit"]),
    (-1, "management", "{name} finance chief departs unexpectedly", ["departs", "unexpectedly"]),
    (0, None, "{name} to present at an investor conference next week", []),
    (0, None, "{name} schedules its quarterly earnings call", []),
    (0, None, "What to watch for {name} this week", []),
    (0, "merger", "{name} said to explore an acquisition in {product}", ["acquisition"]),
]
SOURCES = ("Demo Wire", "Synthetic Street Journal", "Example Markets Daily")
STRATEGY_THRESHOLDS = (0.15, 0.25, 0.35)
CMS_WEIGHTS = {"sentiment": 0.5, "technical": 0.3, "regime": 0.2}
SIGNAL_MINUTES = (60, 210, 360)  # 10:30, 13:00 and 15:30 New York time
# Final status of the demo orders, by weight; the moves that get there.
ORDER_PATHS = [
    (50, ("submitted", "filled")),
    (10, ("submitted", "partially_filled", "filled")),
    (10, ("submitted", "partially_filled")),
    (10, ("submitted",)),
    (5, ()),
    (10, ("submitted", "cancelled")),
    (5, ("rejected",)),
]
MAX_ORDERS = 40


@dataclass
class Market:
    """Everything the demo loads, generated from one seed (no database involved)."""

    seed: int
    symbols: list[str]
    times: list[dt.datetime]                  # every bar's timestamp
    closes: dict[str, list[float]]            # close per symbol per bar
    bars: list[dict]                          # Price rows
    articles: list[dict]                      # Article rows
    scores: list[dict]                        # SentimentScore rows; "article" is an index into articles
    events: list[dict]                        # Event rows; "article" is an index or None
    signals: list[dict]                       # TradingSignal rows
    orders: list[tuple[dict, int, list[tuple[str, dict]]]] = field(default_factory=list)
    backtests: list[dict] = field(default_factory=list)

    @property
    def start(self) -> dt.datetime:
        return self.times[0]

    @property
    def end(self) -> dt.datetime:
        return self.times[-1] + dt.timedelta(minutes=1)


def trading_minutes(first_day: dt.date = FIRST_DAY, days: int = DAYS) -> list[dt.datetime]:
    """The 1-minute bar timestamps of ``days`` weekdays from ``first_day``, UTC."""
    times, day = [], first_day
    while len(times) < days * SESSION_MINUTES:
        if day.weekday() < 5:
            opening = dt.datetime.combine(day, SESSION_OPEN, UTC)
            times += [opening + dt.timedelta(minutes=m) for m in range(SESSION_MINUTES)]
        day += dt.timedelta(days=1)
    return times


def _minute_sigma(annual: float) -> float:
    return annual / math.sqrt(MINUTES_PER_YEAR)


def _cents(value: float) -> Decimal:
    return Decimal(f"{value:.2f}")


def generate(seed: int = SEED) -> Market:
    """The whole demo data set for ``seed``; the same seed gives the same data."""
    rng = random.Random(seed)
    symbols = list(SYMBOLS)
    times = trading_minutes()
    articles, scores, shocks = _news(rng, symbols, times)
    closes, bars = _prices(rng, symbols, times, shocks)
    events = _events(rng, articles, scores, symbols, times, closes)
    signals = _signals(symbols, times, closes, articles, scores)
    market = Market(seed, symbols, times, closes, bars, articles, scores, events, signals)
    market.orders = _orders(rng, market)
    from .backtest import backtest  # it reads this module's constants

    market.backtests = [backtest(market, threshold) for threshold in STRATEGY_THRESHOLDS]
    return market


def _bar_index(times: list[dt.datetime], when: dt.datetime) -> int | None:
    """Index of the bar at or after ``when`` (news out of hours moves the next open)."""
    low, high = 0, len(times)
    while low < high:
        mid = (low + high) // 2
        if times[mid] < when:
            low = mid + 1
        else:
            high = mid
    return low if low < len(times) else None


def _news(rng: random.Random, symbols: list[str], times: list[dt.datetime]):
    """Articles, their sentiment scores, and the price shocks they cause."""
    weights = [SYMBOLS[s][5] for s in symbols]
    days = sorted({t.date() for t in times})
    drafts = []
    for number in range(300):
        symbol = rng.choices(symbols, weights)[0]
        name, sector = SYMBOLS[symbol][:2]
        polarity, event_type, headline, keywords = rng.choice(HEADLINES)
        published = dt.datetime.combine(rng.choice(days), dt.time(11), UTC) + dt.timedelta(
            seconds=rng.randrange(12 * 3600))
        tagged = [symbol]
        if rng.random() < 0.3:  # a peer from the same sector gets mentioned too
            peers = [s for s in symbols if s != symbol and SYMBOLS[s][1] == sector]
            if peers:
                tagged.append(rng.choice(peers))
        score = polarity * rng.uniform(0.35, 0.95) if polarity else rng.uniform(-0.2, 0.2)
        drafts.append((published, number, symbol, tagged, name, sector, polarity, event_type,
                       headline, keywords, round(score, 4), round(rng.uniform(0.55, 0.98), 4)))
    drafts.sort()
    articles, scores = [], []
    shocks: dict[str, dict[int, float]] = {s: {} for s in symbols}
    for index, (published, number, symbol, tagged, name, sector, polarity, event_type,
                headline, keywords, score, confidence) in enumerate(drafts):
        title = headline.format(name=name, product=PRODUCTS[sector])
        slug = "-".join(word.strip(",.$'").lower() for word in title.split()[:6])
        articles.append({
            "title": title,
            "content": (f"{title}. {name} ({symbol}) was in focus as traders weighed the news"
                        f"{': ' + ', '.join(keywords) if keywords else ''}. "
                        "This article is synthetic demo data generated by marketstore."),
            "source": SOURCES[number % len(SOURCES)],
            "url": f"{URL_PREFIX}{published:%Y/%m/%d}/{slug}-{number:03d}",
            "published_at": published,
            "symbols": tagged,
            "metadata": {"demo": True, "event_type": event_type, "polarity": polarity},
        })
        scores.append({
            "article": index,
            "score": score,
            "confidence": confidence,
            "keywords_positive": keywords if polarity > 0 else [],
            "keywords_negative": keywords if polarity < 0 else [],
            "model": SCORER,
            "timestamp": published + dt.timedelta(seconds=30 + rng.randrange(240)),
        })
        bar = _bar_index(times, published)
        if bar is not None and polarity:
            # A log return: 40% priced in over 10 minutes, the rest drifts in over the
            # next 5 hours (the post-news drift that gives sentiment signals an edge).
            move = score * confidence * rng.uniform(0.006, 0.02)
            for affected, share in zip(tagged, (1.0, 0.3)):
                drift = shocks[affected]
                for step in range(310):
                    part = 0.4 / 10 if step < 10 else 0.6 / 300
                    drift[bar + step] = drift.get(bar + step, 0.0) + share * move * part
    return articles, scores, shocks


def _prices(rng, symbols, times, shocks):
    """Geometric random walk per symbol: market factor x beta + own noise + news drift."""
    market_sigma = _minute_sigma(0.15)
    market = [rng.gauss(0, market_sigma) for _ in times]
    gaps = {i: rng.gauss(0, 0.006) for i in range(SESSION_MINUTES, len(times), SESSION_MINUTES)}
    closes: dict[str, list[float]] = {}
    bars = []
    for symbol in symbols:
        _, _, price, vol, beta, _ = SYMBOLS[symbol]
        sigma = _minute_sigma(math.sqrt(max(vol ** 2 - (beta * 0.15) ** 2, 0.01)))
        drift = shocks[symbol]
        daily_volume = 4e7 / math.sqrt(price)
        series = []
        for i, ts in enumerate(times):
            minute = i % SESSION_MINUTES
            if i in gaps:
                price *= math.exp(beta * gaps[i] + rng.gauss(0, 0.004))
            open_ = price
            price = open_ * math.exp(beta * market[i] + rng.gauss(0, sigma) + drift.get(i, 0.0))
            o, c = _cents(open_), _cents(price)
            high = max(_cents(max(open_, price) * math.exp(abs(rng.gauss(0, 0.6 * sigma)))), o, c)
            low = min(_cents(min(open_, price) * math.exp(-abs(rng.gauss(0, 0.6 * sigma)))), o, c)
            # U-shaped intraday volume, busier while news moves the price.
            shape = 0.6 + 1.8 * ((minute - SESSION_MINUTES / 2) / (SESSION_MINUTES / 2)) ** 2
            activity = 1 + 4 * abs(drift.get(i, 0.0)) / sigma
            volume = daily_volume / SESSION_MINUTES * shape * activity * rng.lognormvariate(0, 0.35)
            bars.append({"symbol": symbol, "timestamp": ts, "open": o, "high": high, "low": low,
                         "close": c, "volume": Decimal(int(volume)), "interval": INTERVAL})
            series.append(float(c))
        closes[symbol] = series
    return closes, bars


def _events(rng, articles, scores, symbols, times, closes):
    """Events from the strongest news, plus price moves and volume spikes found in the bars."""
    events = []
    for index, (article, score) in enumerate(zip(articles, scores)):
        event_type = article["metadata"]["event_type"]
        strength = abs(score["score"]) * score["confidence"]
        if event_type is None or strength < 0.35:
            continue
        events.append({
            "article": index, "symbols": article["symbols"], "event_type": event_type,
            "severity": max(1, min(5, round(1 + 4.5 * strength))),
            "keywords": score["keywords_positive"] + score["keywords_negative"],
            "details": {"demo": True, "headline": article["title"], "sentiment": score["score"]},
            "timestamp": score["timestamp"] + dt.timedelta(minutes=1),
        })
    for symbol in symbols:
        series = closes[symbol]
        sigma = _minute_sigma(SYMBOLS[symbol][3])
        for day in range(len(times) // SESSION_MINUTES):
            first = day * SESSION_MINUTES
            moves = [(math.log(series[i] / series[i - 30]), i) for i in range(first + 30, first + SESSION_MINUTES)]
            move, at = max(moves, key=lambda m: abs(m[0]))
            z = abs(move) / (sigma * math.sqrt(30))
            if z < 3.3:
                continue
            events.append({
                "article": None, "symbols": [symbol],
                "event_type": "volume_spike" if rng.random() < 0.3 else "price_move",
                "severity": max(1, min(5, int(z) - 1)), "keywords": ["rally" if move > 0 else "selloff"],
                "details": {"demo": True, "return_30m_pct": round(100 * move, 2), "z_score": round(z, 2)},
                "timestamp": times[at],
            })
    events.sort(key=lambda e: e["timestamp"])
    return events


def _signals(symbols, times, closes, articles, scores):
    """Composite market score: confidence-weighted news sentiment of the last 24 h,
    60-minute momentum and the market's move since the open, each in [-1, 1]."""
    signals = []
    for day in range(len(times) // SESSION_MINUTES):
        first = day * SESSION_MINUTES
        for offset in SIGNAL_MINUTES:
            i = first + offset
            now = times[i]
            regime_return = sum(math.log(closes[s][i] / closes[s][first]) for s in symbols) / len(symbols)
            regime = math.tanh(regime_return / 0.005)
            for symbol in symbols:
                recent = [(score["score"], score["confidence"]) for article, score in zip(articles, scores)
                          if symbol in article["symbols"]
                          and now - dt.timedelta(hours=24) <= score["timestamp"] <= now]
                weight = sum(c for _, c in recent)
                sentiment = sum(s * c for s, c in recent) / weight if weight else 0.0
                momentum = math.log(closes[symbol][i] / closes[symbol][i - 60])
                technical = math.tanh(momentum / (_minute_sigma(SYMBOLS[symbol][3]) * math.sqrt(60)) / 2)
                cms = max(-1.0, min(1.0, CMS_WEIGHTS["sentiment"] * sentiment
                                    + CMS_WEIGHTS["technical"] * technical + CMS_WEIGHTS["regime"] * regime))
                kind = "buy" if cms >= 0.2 else "sell" if cms <= -0.2 else "hold"
                signals.append({
                    "symbol": symbol, "signal_type": kind, "cms_score": round(cms, 4),
                    "sentiment_component": round(sentiment, 4), "technical_component": round(technical, 4),
                    "regime_component": round(regime, 4), "timestamp": now,
                    "explanation": {"demo": True, "weights": CMS_WEIGHTS, "articles_24h": len(recent),
                                    "return_60m_pct": round(100 * momentum, 3),
                                    "market_return_pct": round(100 * regime_return, 3)},
                })
    return signals


def _orders(rng, market: Market):
    """Orders for the strongest buy/sell signals, each with the status moves it will make."""
    index = {ts: i for i, ts in enumerate(market.times)}
    chosen = sorted((s for s in enumerate(market.signals) if s[1]["signal_type"] != "hold"),
                    key=lambda s: (-abs(s[1]["cms_score"]), s[0]))[:MAX_ORDERS]
    plans = []
    for number, (signal_index, signal) in enumerate(sorted(chosen, key=lambda s: s[0]), 1):
        i = index[signal["timestamp"]] + 1
        price = market.closes[signal["symbol"]][i]
        side = signal["signal_type"]
        sign = 1 if side == "buy" else -1
        order_type = ("market", "limit", "limit", "stop")[number % 4]
        quantity = max(2, round(10_000 / price))
        limit = {"market": None, "limit": _cents(price * (1 - sign * 0.001)),
                 "stop": _cents(price * (1 + sign * 0.005))}[order_type]
        row = {"order_id": f"{ORDER_PREFIX}{signal['timestamp']:%Y%m%d}-{number:03d}",
               "symbol": signal["symbol"], "order_type": order_type, "side": side,
               "quantity": Decimal(quantity), "price": limit,
               "timestamp": signal["timestamp"] + dt.timedelta(minutes=1)}
        fill = _cents(price * (1 + sign * rng.uniform(0, 0.0008)))
        path = rng.choices([p for _, p in ORDER_PATHS], [w for w, _ in ORDER_PATHS])[0]
        moves = []
        for status in path:
            fills = {}
            if status == "partially_filled":
                fills = {"filled_quantity": Decimal(quantity // 2), "average_fill_price": fill}
            elif status == "filled":
                fills = {"filled_quantity": Decimal(quantity), "average_fill_price": fill}
            moves.append((status, fills))
        plans.append((row, signal_index, moves))
    return plans
