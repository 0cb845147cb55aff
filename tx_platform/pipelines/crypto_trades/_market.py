"""Reference data for the crypto market simulator: instruments and the venues that trade them.

Prices are plausible 2026 levels; volatilities are annualised GBM sigmas; sizes are in the quote
currency. Scales never exceed the contract's (price 10 decimals, quantity 18).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tx_platform.errors import ConfigError


@dataclass(frozen=True)
class Instrument:
    """A BASE-QUOTE pair with its price dynamics and typical trade sizes."""

    symbol: str  # BASE-QUOTE, e.g. BTC-USD
    base: str  # asset bought or sold
    quote: str  # currency the price is quoted in
    start_price: Decimal  # global mid price when a simulation starts
    annual_volatility: float  # GBM sigma, per year
    weight: float  # share of trades
    price_scale: int  # decimals of a printed price (<= 10)
    quantity_scale: int  # decimals of a quantity (<= 18)
    median_notional: float  # typical trade size, in the quote currency
    whale_notional: Decimal  # a trade with price x quantity at or above this is a whale trade


@dataclass(frozen=True)
class Venue:
    """An exchange; its prints sit a persistent few basis points off the global mid."""

    name: str
    weight: float  # share of trades
    premium_bps: float  # persistent offset of this venue's prices vs the global mid (may be < 0)


_INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("BTC-USD", "BTC", "USD", Decimal("97250.00"), 0.60, 0.30, 2, 8, 2_500.0, Decimal(1_000_000)),
    Instrument("ETH-USD", "ETH", "USD", Decimal("3420.50"), 0.75, 0.22, 2, 18, 1_500.0, Decimal(500_000)),
    Instrument("SOL-USD", "SOL", "USD", Decimal("186.420"), 1.00, 0.14, 3, 9, 600.0, Decimal(250_000)),
    Instrument("BTC-USDT", "BTC", "USDT", Decimal("97280.00"), 0.60, 0.18, 2, 8, 3_000.0, Decimal(1_000_000)),
    Instrument("ETH-EUR", "ETH", "EUR", Decimal("3165.80"), 0.75, 0.08, 2, 8, 1_200.0, Decimal(400_000)),
    Instrument("DOGE-USD", "DOGE", "USD", Decimal("0.1512340"), 1.10, 0.08, 7, 8, 300.0, Decimal(100_000)),
)

#: Instruments by symbol, in a fixed order (the simulator's output depends on it).
SYMBOLS: dict[str, Instrument] = {i.symbol: i for i in _INSTRUMENTS}

#: Exchanges by name, in a fixed order.
EXCHANGES: dict[str, Venue] = {
    v.name: v
    for v in (
        Venue("COINBASE", 0.35, 2.0),
        Venue("KRAKEN", 0.20, -1.0),
        Venue("BINANCE", 0.35, -2.5),
        Venue("BITSTAMP", 0.10, 1.0),
    )
}

#: Every currency a price is quoted in.
QUOTE_CURRENCIES: frozenset[str] = frozenset(i.quote for i in SYMBOLS.values())


def whale_threshold(symbol: str) -> Decimal:
    """Notional (price x quantity, in the quote currency) from which a trade of ``symbol`` is a whale trade."""
    try:
        return SYMBOLS[symbol].whale_notional
    except KeyError:
        msg = f"unknown symbol {symbol!r}; known: {', '.join(SYMBOLS)}"
        raise ConfigError(msg) from None
