"""Point-in-time sentiment: raw score frames, and scores joined to price bars without look-ahead.

A bar starting at ``t`` of width ``w`` closes at ``d = t + w``; a score counts
for it when its article is tagged with the bar's symbol, its model matches,
and it was known at ``k = published_at + latency`` with ``d - window <= k < d``.
The property test computes that definition in pandas from the raw-score frame.
"""
from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import marketstore
from marketstore import (
    ArticleRepository,
    DataValidationError,
    PriceRepository,
    SentimentScoreRepository,
    SentimentWindow,
)

pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pl = pytest.importorskip("polars")

UTC = dt.timezone.utc
NEW_YORK = "America/New_York"
HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)
DST = dt.datetime(2024, 3, 9, 0, 0, tzinfo=UTC)  # New York moves to daylight time on 2024-03-10


class _Undo(Exception):
    """Raised to roll back one example's rows; carries what the example checked."""


def _bar(symbol: str, timestamp: dt.datetime) -> dict:
    return {"symbol": symbol, "timestamp": timestamp, "open": 10, "high": 11, "low": 9, "close": 10, "volume": 100}


def _article(published_at, symbols, scores, n=[0]) -> list[int]:
    """An article and its ``scores`` (``(model, score)``, scored when published): the score ids, in order."""
    n[0] += 1
    article = ArticleRepository().create(title=f"news {n[0]}", symbols=symbols, published_at=published_at)
    repo = SentimentScoreRepository()
    scored = {} if published_at is None else {"timestamp": published_at}
    return [repo.create(article=article.id, score=score, confidence=0.5, model=model, **scored).id
            for model, score in scores]


def _expected(bars, raw, widths, window: dt.timedelta, latency: dt.timedelta, model):
    """The definition, bar by bar, from the raw-score frame: (mean, count, last) per bar."""
    raw = raw.reset_index()
    if model is not None:
        raw = raw[raw["model"] == model]
    out = []
    for (symbol, start) in bars.index:
        close = start + widths[symbol]
        known = raw["published_at"] + latency
        counted = raw[(raw["symbol"] == symbol) & (known >= close - window) & (known < close)]
        # raw rows are ordered by symbol, published_at, then score id: the last counted row has the
        # greatest known time (latency is one constant), ties to the greater id
        out.append((counted["score"].mean() if len(counted) else math.nan, len(counted),
                    counted["score"].iloc[-1] if len(counted) else math.nan))
    return out


def _assert_same(frame, expected):
    got = list(zip(frame["sentiment_mean"], frame["sentiment_count"], frame["sentiment_last"]))
    assert len(got) == len(expected)
    for (mean, count, last), (e_mean, e_count, e_last) in zip(got, expected):
        assert count == e_count
        assert math.isnan(mean) == math.isnan(e_mean) and math.isnan(last) == math.isnan(e_last)
        if not math.isnan(e_mean):
            assert abs(mean - e_mean) <= 1e-12 and abs(last - e_last) <= 1e-12


# Mostly on the hour or the half hour: known exactly at a bar's close, or exactly a window before it.
on_the_hour = st.integers(-24, 5 * 24).map(lambda h: 60 * h)
minutes = st.one_of(on_the_hour, on_the_hour, on_the_hour.map(lambda m: m + 30), st.integers(-24 * 60, 5 * 24 * 60))
article_specs = st.lists(st.tuples(
    st.none() | minutes,  # published (minutes from DST) or undated
    st.lists(st.sampled_from(["AAA", "BBB", "CCC"]), max_size=3, unique=True),
    st.lists(st.tuples(st.floats(-1, 1, allow_nan=False), st.booleans()), max_size=3),  # score, and its negation by a second scorer
), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(articles=article_specs,
       hours=st.sets(st.integers(0, 4 * 24), min_size=10, max_size=60),
       days=st.sets(st.integers(0, 4), min_size=1),
       window=st.sampled_from([DAY, 6 * HOUR, dt.timedelta(minutes=90)]),
       latency=st.sampled_from([dt.timedelta(0), dt.timedelta(minutes=30), HOUR]),
       model=st.sampled_from([None, "finbert", "vader"]))
def test_the_join_is_the_definition_computed_in_pandas_from_the_raw_scores(db, articles, hours, days, window,
                                                                             latency, model):
    join = SentimentWindow(window=window, model=model, latency=latency)
    try:
        with marketstore.get_db_session():
            prices = PriceRepository()
            prices.copy_from([_bar("AAA", DST + h * HOUR) for h in sorted(hours)], interval="1h")
            # daily bars stamped at the previous New York close (21:00 UTC before the change, 20:00 after)
            prices.copy_from([_bar("BBB", DST + d * DAY - 3 * HOUR) for d in sorted(days)], interval="1d")
            for published, symbols, scores in articles:
                at = None if published is None else DST + dt.timedelta(minutes=published)
                pairs = [("finbert", s) for s, _ in scores] + [("vader", -s) for s, negated in scores if negated]
                _article(at, symbols, pairs)
            raw = SentimentScoreRepository().frame(["AAA", "BBB"], bucket=None)
            raw_bars = prices.frame(["AAA", "BBB"], sentiment=join)
            local = prices.frame("AAA", dt.date(2024, 3, 8), dt.date(2024, 3, 14), bucket="1d", tz=NEW_YORK,
                                 sentiment=join)
            raise _Undo(raw, raw_bars, local)
    except _Undo as undo:
        raw, raw_bars, local = undo.args
    assert raw["published_at"].notna().all() and str(raw["published_at"].dt.tz) == "UTC"
    assert raw_bars["sentiment_count"].dtype == "int64" and raw_bars["sentiment_mean"].dtype == "float64"
    _assert_same(raw_bars, _expected(raw_bars, raw, {"AAA": HOUR, "BBB": DAY}, window, latency, model))
    # New York calendar days (23 hours on 2024-03-10), each closing at the next local midnight
    keyed = local.set_index(pd.Index(["AAA"] * len(local), name="symbol"), append=True).swaplevel()
    closes = [t + pd.DateOffset(days=1) for t in local.index]
    assert all(c.tz_convert(NEW_YORK).hour == 0 for c in closes)
    expected = [_expected(keyed.iloc[[i]], raw, {"AAA": close - t}, window, latency, model)[0]
                for i, (close, t) in enumerate(zip(closes, local.index))]
    _assert_same(local, expected)


@pytest.fixture
def hourly(db):
    """AAA hourly bars 10:00-13:00 UTC on 2024-03-04 (closing 11:00-14:00)."""
    start = dt.datetime(2024, 3, 4, 10, tzinfo=UTC)
    PriceRepository().copy_from([_bar("AAA", start + i * HOUR) for i in range(4)], interval="1h")
    return start


def _counts(frame):
    return list(frame["sentiment_count"])


def test_a_score_known_at_a_bar_s_close_counts_for_the_next_bar_and_latency_shifts_it(hourly):
    _article(hourly + HOUR, ["AAA"], [("finbert", 0.5)])  # known exactly at the close of the 10:00 bar
    prices = PriceRepository()
    assert _counts(prices.frame("AAA", sentiment=True)) == [0, 1, 1, 1]
    assert _counts(prices.frame("AAA", sentiment=SentimentWindow(window="1h"))) == [0, 1, 0, 0]
    # a score known one microsecond before the close counts for that bar
    just_before = HOUR - dt.timedelta(microseconds=1)
    assert _counts(prices.frame("AAA", sentiment=SentimentWindow(window="1h", latency=just_before))) == [0, 1, 0, 0]
    assert _counts(prices.frame("AAA", sentiment=SentimentWindow(window="1h", latency="59m"))) == [0, 1, 0, 0]
    assert _counts(prices.frame("AAA", sentiment=SentimentWindow(window="1h", latency="1h"))) == [0, 0, 1, 0]
    assert _counts(prices.frame("AAA", sentiment=SentimentWindow(window="1h", latency="61m"))) == [0, 0, 1, 0]


def test_a_score_known_exactly_window_before_the_close_counts(hourly):
    _article(hourly, ["AAA"], [("finbert", 0.25)])  # the 10:00 bar closes at 11:00: k = d - 1h
    # known one microsecond before the 11:00 bar's window opens, and one before the 12:00 bar's
    _article(hourly - dt.timedelta(microseconds=1), ["AAA"], [("finbert", -1.0)])
    _article(hourly + 2 * HOUR - dt.timedelta(microseconds=1), ["AAA"], [("finbert", -0.5)])
    frame = PriceRepository().frame("AAA", sentiment=SentimentWindow(window="1 hour"))
    assert _counts(frame) == [1, 1, 0, 0]
    assert frame["sentiment_mean"].iloc[0] == frame["sentiment_last"].iloc[0] == 0.25
    assert math.isnan(frame["sentiment_mean"].iloc[2]) and math.isnan(frame["sentiment_last"].iloc[2])


def test_last_is_the_latest_known_score_ties_to_the_greater_id(hourly):
    first = _article(hourly + dt.timedelta(minutes=10), ["AAA"], [("finbert", -0.5), ("finbert", 0.75)])
    _article(hourly + dt.timedelta(minutes=5), ["AAA"], [("finbert", 0.9)])  # known earlier, made later
    assert first[0] < first[1]
    frame = PriceRepository().frame("AAA", sentiment=True)
    assert list(frame["sentiment_count"]) == [3, 3, 3, 3]
    assert list(frame["sentiment_last"]) == [0.75] * 4
    assert frame["sentiment_mean"].iloc[0] == pytest.approx((0.9 + 0.75 - 0.5) / 3, abs=1e-15)


def test_model_filters_the_join_and_the_score_frame(hourly):
    _article(hourly + dt.timedelta(minutes=30), ["AAA"], [("finbert", 0.6), ("vader", -0.6)])
    prices, scores = PriceRepository(), SentimentScoreRepository()
    both = prices.frame("AAA", sentiment=True)
    assert list(both["sentiment_count"]) == [2] * 4 and list(both["sentiment_mean"]) == [0.0] * 4
    finbert = prices.frame("AAA", sentiment=SentimentWindow(model="finbert"))
    assert list(finbert["sentiment_count"]) == [1] * 4 and list(finbert["sentiment_mean"]) == [0.6] * 4
    assert list(prices.frame("AAA", sentiment=SentimentWindow(model="other"))["sentiment_count"]) == [0] * 4
    assert list(scores.frame("AAA", bucket="1h", model="vader")["average"]) == [-0.6]
    assert list(scores.frame("AAA", bucket="1h")["average"]) == [0.0]
    raw = scores.frame("AAA", bucket=None, model="finbert")
    assert list(raw["model"]) == ["finbert"] and list(raw["score"]) == [0.6]


def test_earnings_after_the_close_do_not_reach_that_day_s_bar(db):
    # Daily bars stamped at the previous New York close (16:00 EST = 21:00 UTC): each closes at 21:00 UTC.
    prices = PriceRepository()
    prices.copy_from([_bar("GOOG", dt.datetime(2012, 1, day, 21, tzinfo=UTC)) for day in (17, 18, 19)],
                     interval="1d")
    _article(dt.datetime(2012, 1, 19, 21, 7, tzinfo=UTC), ["GOOG"], [("finbert", 0.8)])
    frame = prices.frame("GOOG", dt.date(2012, 1, 1), dt.date(2012, 2, 1), sentiment=True)
    assert list(frame.index + pd.Timedelta(days=1)) == [pd.Timestamp(2012, 1, d, 21, tz="UTC") for d in (18, 19, 20)]
    assert list(frame["sentiment_count"]) == [0, 0, 1]  # not the bar closing 01-19 21:00; the next one
    assert frame["sentiment_last"].iloc[2] == 0.8
    # the look-ahead a UTC-day bucket gives: the article lands on 01-19
    look_ahead = SentimentScoreRepository().frame("GOOG", dt.date(2012, 1, 1), dt.date(2012, 2, 1), bucket="1d")
    assert list(look_ahead.index) == [pd.Timestamp(2012, 1, 19, tz="UTC")]


@pytest.mark.parametrize("stamped", ["midnight UTC", "midnight New York"])
def test_vendor_daily_bars_close_at_the_session_close_given(db, stamped):
    # backtesting.py stamps a daily bar at midnight UTC of its date, yfinance at midnight New York time:
    # with close= and tz=, either closes at 16:00 New York time that day (21:00 UTC in January, 20:00 in July).
    zone = "UTC" if stamped == "midnight UTC" else "America/New_York"
    days = [pd.Timestamp(2012, 1, d, tz=zone) for d in (18, 19, 20)] + [pd.Timestamp(2012, 7, d, tz=zone)
                                                                           for d in (9, 10)]
    prices = PriceRepository()
    prices.copy_from([_bar("GOOG", d.to_pydatetime()) for d in days], interval="1d")
    _article(dt.datetime(2012, 1, 19, 21, 7, tzinfo=UTC), ["GOOG"], [("finbert", 0.8)])  # after the 16:00 close
    _article(dt.datetime(2012, 1, 19, 20, 55, tzinfo=UTC), ["GOOG"], [("finbert", -0.4)])  # before it
    _article(dt.datetime(2012, 7, 9, 20, 30, tzinfo=UTC), ["GOOG"], [("finbert", 0.3)])  # 16:30 EDT: after
    window = SentimentWindow(close="16:00", tz="America/New_York")
    frame = prices.frame("GOOG", sentiment=window)
    assert list(frame["sentiment_count"]) == [0, 1, 1, 0, 1]
    assert list(frame["sentiment_last"].fillna(9)) == [9, -0.4, 0.8, 9, 0.3]
    # without close=, the same bars close at t + 1 day: the after-hours article lands on 01-19
    assert frame.index[1] == days[1] and prices.frame("GOOG", sentiment=True)["sentiment_last"].iloc[1] == 0.8


def test_undated_articles_never_count_and_are_not_raw_scores(hourly):
    _article(None, ["AAA"], [("finbert", 1.0)])
    _article(hourly, ["AAA"], [("finbert", -1.0)])
    assert list(PriceRepository().frame("AAA", sentiment=True)["sentiment_count"]) == [1] * 4
    assert list(SentimentScoreRepository().frame("AAA", bucket=None)["score"]) == [-1.0]


def test_raw_scores_frame_columns_types_and_order(db):
    t = dt.datetime(2024, 3, 4, 10, tzinfo=UTC)
    ids = _article(t + HOUR, ["BBB", "AAA"], [("finbert", 0.1), ("vader", 0.2)])
    other = _article(t, ["AAA"], [("finbert", 0.3)])
    scores = SentimentScoreRepository()
    one = scores.frame("AAA", t, t + DAY, bucket=None)
    assert one.index.name == "timestamp" and str(one.index.tz) == "UTC"
    assert list(one.columns) == ["score", "confidence", "model", "article_id", "published_at"]
    assert [str(one[c].dtype) for c in ("score", "confidence", "article_id")] == ["float64", "float64", "int64"]
    assert list(one["score"]) == [0.3, 0.1, 0.2] and list(one["model"]) == ["finbert", "finbert", "vader"]
    assert (one.index == one["published_at"]).all()
    many = scores.frame(["BBB", "AAA"], t, t + DAY, bucket=None, tz=NEW_YORK)
    assert list(many.index.names) == ["symbol", "timestamp"]
    assert list(many.index.get_level_values("symbol")) == ["AAA"] * 3 + ["BBB"] * 2
    assert str(many["published_at"].dt.tz) == NEW_YORK
    assert scores.frame("AAA", t + HOUR, None, bucket=None)["score"].tolist() == [0.1, 0.2]  # [start, end)
    assert scores.frame("AAA", None, t + HOUR, bucket=None)["score"].tolist() == [0.3]
    table = scores.frame(["AAA"], dt.date(2024, 3, 4), dt.date(2024, 3, 5), bucket=None, library="arrow")
    assert table.column_names == ["symbol", "timestamp", "score", "confidence", "model", "article_id",
                                  "published_at"]
    assert table.schema.field("published_at").type == pa.timestamp("us", tz="UTC")
    assert table.column("model").type == pa.string()
    polars = scores.frame("AAA", bucket=None, library="polars")
    assert polars["published_at"].dtype == pl.Datetime("us", "UTC") and polars["model"].to_list() == [
        "finbert", "finbert", "vader"]
    empty = scores.frame("ZZZ", bucket=None)
    assert len(empty) == 0 and list(empty.columns) == list(one.columns)
    assert other[0] > ids[-1]  # ordered by when known, not by id


def test_as_of_still_hides_articles_ingested_later(hourly):
    _article(hourly, ["AAA"], [("finbert", 0.5)])
    scores = SentimentScoreRepository()
    before, after = dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime.now(UTC) + DAY
    for bucket in (None, "1h", "1d"):
        assert len(scores.frame(["AAA"], bucket=bucket, as_of=before)) == 0
        assert len(scores.frame("AAA", bucket=bucket, as_of=before)) == 0
        assert len(scores.frame("AAA", bucket=bucket, as_of=after)) == 1


def test_bucketed_scores_are_aligned_in_the_zone(db):
    _article(dt.datetime(2024, 3, 10, 3, 30, tzinfo=UTC), ["AAA"], [("finbert", 0.5)])  # 22:30 on 03-09 in New York
    _article(dt.datetime(2024, 3, 10, 5, 30, tzinfo=UTC), ["AAA"], [("finbert", 0.25)])  # 00:30 on 03-10
    scores = SentimentScoreRepository()
    local = scores.frame("AAA", dt.date(2024, 3, 9), dt.date(2024, 3, 11), bucket="1d", tz=NEW_YORK)
    assert list(local.index) == [pd.Timestamp(2024, 3, 9, tz=NEW_YORK), pd.Timestamp(2024, 3, 10, tz=NEW_YORK)]
    assert list(local["count"]) == [1, 1]
    assert list(scores.frame("AAA", bucket="1d")["count"]) == [2]  # one UTC day
    assert list(scores.frame("AAA", bucket="1mo")["count"]) == [2]


def test_sentiment_on_buckets_with_fill(hourly):
    _article(hourly, ["AAA"], [("finbert", 0.5)])
    frame = PriceRepository().frame("AAA", dt.date(2024, 3, 3), dt.date(2024, 3, 6), bucket="1d", fill="nan",
                                    sentiment=SentimentWindow(window="2d"))
    # buckets 03-03, 03-04, 03-05 close at midnight of the next day: the score (03-04 10:00) counts for the
    # 03-04 bucket (closing 03-05 00:00) and the 03-05 one (closing 03-06 00:00, window reaches 03-04 00:00)
    assert list(frame["sentiment_count"]) == [0, 1, 1]
    assert list(frame["bars"]) == [0, 4, 0]


@pytest.mark.parametrize("sentiment, field", [
    ("yes", "sentiment"), (1, "sentiment"),
])
def test_a_bad_sentiment_is_refused(db, sentiment, field):
    with pytest.raises(DataValidationError) as info:
        PriceRepository().frame("AAA", sentiment=sentiment)
    assert info.value.field == field


@pytest.mark.parametrize("kwargs, field", [
    ({"window": "0 seconds"}, "window"), ({"window": "1mo"}, "window"), ({"window": "1M"}, "window"),
    ({"window": dt.timedelta(0)}, "window"), ({"latency": dt.timedelta(seconds=-1)}, "latency"),
    ({"latency": "soon"}, "latency"), ({"model": ""}, "model"), ({"window": 3}, "window"),
])
def test_a_bad_sentiment_window_is_refused_when_made(kwargs, field):
    with pytest.raises(DataValidationError) as info:
        SentimentWindow(**kwargs)
    assert info.value.field == field


def test_sentiment_window_is_exported_and_frozen():
    assert marketstore.SentimentWindow is marketstore.repositories.SentimentWindow
    window = SentimentWindow()
    assert (window.window, window.model, window.latency) == ("1 day", None, "0 seconds")
    with pytest.raises(AttributeError):
        window.window = "2d"
