"""Independent pure-Python one-minute candles, the expected result for the candle pipeline's tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, localcontext

#: Enough digits for any contract price x quantity and their sums; anything inexact raises.
_EXACT = Context(prec=100, traps=[Inexact, InvalidOperation, DivisionByZero, Overflow])


@dataclass(frozen=True)
class Candle:
    """OHLC, volume (sum of quantity), trade count and notional (sum of price x quantity) of one minute."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trade_count: int
    notional: Decimal


def _minute(event_time: datetime) -> datetime:
    return event_time.astimezone(UTC).replace(second=0, microsecond=0)


def reference_candles(trades: Iterable[dict]) -> dict[tuple[str, datetime], Candle]:
    """Candles keyed by ``(symbol, minute start as a UTC datetime)``.

    Open is the price of the minute's earliest trade, close of its latest; trades at the same
    event_time are ordered by trade_id (the smallest string first). Sums are exact decimals.
    """
    groups: dict[tuple[str, datetime], list[dict]] = {}
    for trade in trades:
        groups.setdefault((trade["symbol"], _minute(trade["event_time"])), []).append(trade)
    candles = {}
    with localcontext(_EXACT):
        for key, group in groups.items():
            group.sort(key=lambda t: (t["event_time"], t["trade_id"]))
            prices = [t["price"] for t in group]
            candles[key] = Candle(
                open=prices[0],
                high=max(prices),
                low=min(prices),
                close=prices[-1],
                volume=sum((t["quantity"] for t in group), Decimal(0)),
                trade_count=len(group),
                notional=sum((t["price"] * t["quantity"] for t in group), Decimal(0)),
            )
    return candles
