"""``marketstore plot prices``: a time axis labelled by the span shown, candles for daily bars.

The figures are built by ``price_figure`` from bars made here, drawn, and read
back through matplotlib's own objects (tick labels, collections by gid).
"""
from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from cli_helpers import fails, succeeds

pytest.importorskip("matplotlib")
from marketstore.cli.plotting import MAX_CANDLES, price_figure  # noqa: E402

UTC = dt.timezone.utc
MONTHS = {"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
HOUR = re.compile(r"\d\d:\d\d")


def _bars(times):
    """Bars at ``times`` rising by one a bar, each with a visible body and wicks."""
    return [SimpleNamespace(timestamp=t, open=100 + i, high=102 + i, low=99 + i, close=101 + i, volume=1000)
            for i, t in enumerate(times)]


def _weekdays(first: dt.date, last: dt.date) -> list[dt.datetime]:
    days = (first + dt.timedelta(days=n) for n in range((last - first).days))
    return [dt.datetime(d.year, d.month, d.day, tzinfo=UTC) for d in days if d.weekday() < 5]


def _minutes(day: dt.date, start: dt.time, end: dt.time, step: int = 1) -> list[dt.datetime]:
    t, stop = dt.datetime.combine(day, start, UTC), dt.datetime.combine(day, end, UTC)
    out = []
    while t < stop:
        out.append(t)
        t += dt.timedelta(minutes=step)
    return out


def _labels(figure) -> list[str]:
    figure.canvas.draw()
    axis = figure.axes[-1]
    low, high = axis.get_xlim()
    return [label.get_text() for label, tick in zip(axis.get_xticklabels(), axis.get_xticks())
            if label.get_text() and low <= tick <= high]


def _artist(figure, gid: str):
    return [c for c in figure.axes[0].get_children() if c.get_gid() == gid]


def test_a_year_of_daily_bars_is_labelled_by_months_and_drawn_as_candles():
    bars = _bars(_weekdays(dt.date(2023, 1, 1), dt.date(2024, 1, 1)))
    figure = price_figure("daily", bars, dt.timedelta(days=1))
    labels = _labels(figure)
    assert 4 <= len(labels) < 20, labels  # one label per bar was 260
    assert all(text in MONTHS or re.fullmatch(r"\d{4}", text) for text in labels), labels
    assert len(MONTHS & set(labels)) >= 4
    bodies, = _artist(figure, "candle-bodies")
    wicks, = _artist(figure, "candle-wicks")
    assert len(bodies.get_paths()) == len(wicks.get_segments()) == len(bars) > MAX_CANDLES
    assert not _artist(figure, "close-line")


def test_ten_years_of_daily_bars_are_labelled_by_years_and_still_candles():
    bars = _bars(_weekdays(dt.date(2014, 1, 1), dt.date(2024, 1, 1)))
    figure = price_figure("ten years", bars, dt.timedelta(days=1))
    labels = _labels(figure)
    assert 4 <= len(labels) < 20 and all(re.fullmatch(r"\d{4}", text) for text in labels), labels
    assert len(_artist(figure, "candle-bodies")[0].get_paths()) == len(bars)


def test_a_month_of_daily_bars_is_labelled_by_days_and_each_candle_stands_over_its_day():
    from matplotlib.dates import num2date

    bars = _bars(_weekdays(dt.date(2023, 3, 1), dt.date(2023, 4, 1)))
    figure = price_figure("month", bars, dt.timedelta(days=1))
    labels = _labels(figure)
    assert 3 <= len(labels) < 20
    assert all(re.fullmatch(r"\d\d", text) or text in MONTHS for text in labels), labels
    bodies, = _artist(figure, "candle-bodies")
    for bar, path in zip(bars, bodies.get_paths()):
        left, right = (num2date(x) for x in (path.vertices[:, 0].min(), path.vertices[:, 0].max()))
        assert bar.timestamp < left < right < bar.timestamp + dt.timedelta(days=1)


def test_a_day_of_minute_bars_is_labelled_by_hours_as_a_close_line():
    bars = _bars(_minutes(dt.date(2024, 3, 8), dt.time(14, 30), dt.time(21)))
    figure = price_figure("minutes", bars, dt.timedelta(minutes=1))
    labels = _labels(figure)
    assert 3 <= len(labels) < 20 and all(HOUR.fullmatch(text) for text in labels), labels
    assert _artist(figure, "close-line") and not _artist(figure, "candle-bodies")


def test_a_month_of_hourly_bars_is_labelled_by_days():
    start = dt.datetime(2023, 3, 1, tzinfo=UTC)
    bars = _bars([start + dt.timedelta(hours=n) for n in range(31 * 24)])
    labels = _labels(price_figure("hours", bars, dt.timedelta(hours=1)))
    assert 3 <= len(labels) < 20
    assert all(re.fullmatch(r"\d\d", text) or text in MONTHS for text in labels), labels


def test_few_intraday_bars_are_candles():
    bars = _bars(_minutes(dt.date(2024, 3, 8), dt.time(14, 30), dt.time(21), step=5))
    assert len(bars) <= MAX_CANDLES
    figure = price_figure("5m", bars, dt.timedelta(minutes=5))
    assert len(_artist(figure, "candle-bodies")[0].get_paths()) == len(bars)


def test_tz_labels_the_axis_in_that_zone():
    """A New York session (14:30-21:00 UTC in March before DST) is labelled 09:30-16:00."""
    bars = _bars(_minutes(dt.date(2024, 3, 8), dt.time(14, 30), dt.time(21), step=5))
    labels = _labels(price_figure("NY", bars, dt.timedelta(minutes=5), tz=ZoneInfo("America/New_York")))
    hours = [int(text[:2]) for text in labels if HOUR.fullmatch(text)]
    assert len(hours) >= 3 and all(9 <= h <= 16 for h in hours), labels


# -- the command, on bars whose interval nobody gave ---------------------------------

def test_plot_prices_reads_the_stored_interval(db, database_url, tmp_path):
    path = tmp_path / "goog.csv"
    lines = [f"GOOG,{t.isoformat()},{100 + i},{102 + i},{99 + i},{101 + i},1000"
             for i, t in enumerate(_weekdays(dt.date(2012, 1, 1), dt.date(2013, 1, 1)))]
    path.write_text("symbol,timestamp,open,high,low,close,volume\n" + "\n".join(lines) + "\n")
    succeeds("ingest", "prices", path, "--database", database_url)
    out = tmp_path / "goog.png"
    result = succeeds("plot", "prices", "GOOG", "--out", out, "--database", database_url)
    assert str(out) in result.stdout and out.stat().st_size > 10_000
    succeeds("plot", "prices", "GOOG", "--start", "2012-03-01", "--end", "2012-04-01", "--tz", "America/New_York",
             "--bucket", "1w", "--out", out, "--database", database_url)
    line = fails("plot", "prices", "GOOG", "--interval", "1m", "--out", out, "--database", database_url)
    assert "no 1m bars for GOOG" in line and "GOOG has 1d bars from 2012-01-02" in line
