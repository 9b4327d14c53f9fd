"""The demo's backtests: the synthetic market's signals replayed as a strategy, and its metrics."""
from __future__ import annotations

import math

from .synthetic import MINUTES_PER_YEAR

def backtest(market, threshold: float, capital: float = 100_000.0) -> dict:
    """Replay the signals: long at cms >= threshold, short at <= -threshold, hold otherwise;
    10% of capital per position, 5 bp commission a side, everything closed at the end."""
    commission = 0.0005
    index = {ts: i for i, ts in enumerate(market.times)}
    by_bar: dict[int, list[dict]] = {}
    for signal in market.signals:
        by_bar.setdefault(index[signal["timestamp"]], []).append(signal)
    positions: dict[str, tuple[int, float, float, int]] = {}  # symbol -> (side, qty, entry price, entry bar)
    realized, trades, curve = 0.0, [], []

    def close(symbol, i):
        nonlocal realized
        side, qty, entry, opened = positions.pop(symbol)
        exit_price = market.closes[symbol][i]
        pnl = side * qty * (exit_price - entry) - commission * qty * (entry + exit_price)
        realized += pnl
        trades.append({"symbol": symbol, "side": "long" if side > 0 else "short", "quantity": round(qty, 4),
                       "entry_time": market.times[opened].isoformat(), "entry_price": round(entry, 2),
                       "exit_time": market.times[i].isoformat(), "exit_price": round(exit_price, 2),
                       "pnl": round(pnl, 2)})

    last = len(market.times) - 1
    for i in range(len(market.times)):
        for signal in by_bar.get(i, ()):
            symbol, cms = signal["symbol"], signal["cms_score"]
            target = 1 if cms >= threshold else -1 if cms <= -threshold else None
            current = positions.get(symbol, (0,))[0]
            if target is None or target == current:
                continue
            if current:
                close(symbol, i)
            price = market.closes[symbol][i]
            positions[symbol] = (target, 0.1 * capital / price, price, i)
        if i == last:
            for symbol in list(positions):
                close(symbol, i)
        if i % 15 == 0 or i == last:
            unrealized = sum(side * qty * (market.closes[s][i] - entry)
                             for s, (side, qty, entry, _) in positions.items())
            curve.append({"timestamp": market.times[i].isoformat(),
                          "equity": round(capital + realized + unrealized, 2)})
    config = {"demo": True, "seed": market.seed, "strategy": "cms_threshold", "threshold": threshold,
              "position_pct": 0.1, "commission_bps": 5, "initial_capital": capital,
              "symbols": market.symbols, "start": market.start.isoformat(), "end": market.end.isoformat()}
    return {"name": f"CMS threshold {threshold:.2f} (demo)", "config": config,
            "metrics": metrics([p["equity"] for p in curve], trades), "trades": trades, "equity_curve": curve}


def metrics(equity: list[float], trades: list[dict]) -> dict:
    returns = [b / a - 1 for a, b in zip(equity, equity[1:])]
    periods_per_year = MINUTES_PER_YEAR / 15
    mean = sum(returns) / len(returns)
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in returns) / len(returns))
    peak, drawdown = equity[0], 0.0
    for value in equity:
        peak = max(peak, value)
        drawdown = min(drawdown, value / peak - 1)
    wins = [t["pnl"] for t in trades if t["pnl"] > 0]
    losses = [-t["pnl"] for t in trades if t["pnl"] <= 0]
    return {
        "total_return": round(equity[-1] / equity[0] - 1, 6),
        "sharpe": round(mean / std * math.sqrt(periods_per_year), 4) if std else 0.0,
        "sortino": round(mean / downside * math.sqrt(periods_per_year), 4) if downside else 0.0,
        "max_drawdown": round(drawdown, 6),
        "num_trades": len(trades),
        "win_rate": round(len(wins) / len(trades), 4) if trades else 0.0,
        "profit_factor": round(sum(wins) / sum(losses), 4) if losses and sum(losses) else None,
        "final_equity": equity[-1],
    }
