"""The `crypto_trades` pipeline: trades printed by crypto exchanges, from a seeded market simulator."""

from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources

from tx_platform.contract import UUID_REGEX, event_time_rules, matches, one_of, positive
from tx_platform.pipelines._spec import PipelineSpec
from tx_platform.pipelines.crypto_trades._market import EXCHANGES, QUOTE_CURRENCIES, SYMBOLS

_HERE = resources.files(__name__)

# A price far outside the last minute's range is not rejected here: exchanges do print such trades
# (thin books, fat fingers), and dropping them would make volume and VWAP disagree with the venue.
# The derived asset `crypto_price_anomalies` flags them instead (see _assets).
CRYPTO_TRADES = PipelineSpec(
    name="crypto_trades",
    contract_path=_HERE / "trade.avsc",
    topic="crypto.trades",
    table="crypto_trades",
    natural_key="trade_id",
    kafka_key="symbol",
    time_column="event_time",
    rules=(
        matches("trade_id", UUID_REGEX, "INVALID_UUID", "trade_id is not a UUID", "trade-1"),
        one_of("symbol", SYMBOLS, "UNKNOWN_SYMBOL", "symbol is not a listed instrument", "LUNA-USD"),
        one_of("exchange", EXCHANGES, "UNKNOWN_EXCHANGE", "exchange is not a known venue", "MTGOX"),
        one_of(
            "quote_currency", QUOTE_CURRENCIES, "UNKNOWN_QUOTE_CURRENCY", "quote_currency is not a listed quote", "XQZ"
        ),
        positive("price", "NON_POSITIVE_PRICE", "price must be positive", Decimal("0")),
        positive("quantity", "NON_POSITIVE_QUANTITY", "quantity must be positive", Decimal("-0.5")),
        *event_time_rules("event_time", datetime(2024, 12, 31, 23, 59, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)),
    ),  # fmt: skip
    generator="tx_platform.pipelines.crypto_trades._simulator:simulate",
    derived_assets="tx_platform.pipelines.crypto_trades._assets:derived_assets",
    migrations=_HERE / "migrations",
    derived_metrics="tx_platform.pipelines.crypto_trades._metrics:market_metrics",
    description="Crypto trades: Kafka key symbol, upserted on trade_id; OHLCV candles, VWAP, spread, whales.",
)

__all__ = ["CRYPTO_TRADES"]
