"""The crypto market metrics against a real Postgres: hand-inserted rows, exact figures.

Each test builds the pipeline's table (``table_ddl``) and its derived tables (its migrations) in a
scratch schema of its own and reads them through ``search_path``, so the figures are exactly those
of the rows inserted here. Rows of another topic are inserted beside them and must not count.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import psycopg2
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tx_platform.config import Settings
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS
from tx_platform.pipelines.crypto_trades._market import EXCHANGES, SYMBOLS
from tx_platform.pipelines.crypto_trades._metrics import MARKET_METRICS, market_metrics
from tx_platform.warehouse import pipeline_migrations, table_ddl
from tx_platform_tests.test_metrics._scrape import Samples, parse, series

pytestmark = pytest.mark.integration

TOPIC, OTHER = "crypto_mm", "crypto_mm_other"
SPEC = CRYPTO_TRADES.with_topic(TOPIC)
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def _at(minute: int, second: int = 0) -> datetime:
    return NOON.replace(minute=minute, second=second)


def _id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def schema(settings: Settings, unique: str) -> Iterator[str]:
    """A scratch schema of this test's own, dropped afterwards."""
    name = f"mm_{unique}"
    conn = psycopg2.connect(settings.dsn())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {name} CASCADE")
        conn.close()


def _connect(settings: Settings, schema: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(settings.dsn(), options=f"-c search_path={schema}")
    conn.autocommit = True
    return conn


def _create(conn: psycopg2.extensions.connection, *, derived: bool) -> None:
    with conn.cursor() as cur:
        cur.execute(table_ddl(CRYPTO_TRADES))
        if derived:
            for migration in pipeline_migrations(CRYPTO_TRADES):
                cur.execute(migration.rendered())


#: (id, symbol, exchange, side, price, quantity, event time, topic)
TRADES = [
    (1, "BTC-USD", "COINBASE", "BUY", "100000.5", "0.5", _at(0, 10), TOPIC),
    (2, "BTC-USD", "COINBASE", "SELL", "100010", "0.25", _at(0, 40), TOPIC),
    (3, "BTC-USD", "KRAKEN", "BUY", "99990", "1", _at(0, 30), TOPIC),
    (4, "BTC-USD", "KRAKEN", "BUY", "99995", "2", _at(0, 30), TOPIC),  # same time as 3: the larger id is last
    (5, "ETH-EUR", "BINANCE", "SELL", "3000", "10", _at(1), TOPIC),
    (6, "BTC-USD", "COINBASE", "BUY", "1", "1000", _at(5), OTHER),  # newer, but another topic's
]


def _insert_trades(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        for offset, (n, symbol, exchange, side, price, quantity, when, topic) in enumerate(TRADES):
            cur.execute(
                "INSERT INTO crypto_trades (trade_id, exchange, symbol, side, price, quantity, quote_currency,"
                " taker_order_id, event_time, kafka_topic, kafka_partition, kafka_offset)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, %s)",
                (_id(n), exchange, symbol, side, Decimal(price), Decimal(quantity), SYMBOLS[symbol].quote,
                 f"o-{n}", when, topic, offset),
            )  # fmt: skip


def _insert_derived(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO crypto_symbol_metrics (symbol, minute, vwap, vwap_15m, volatility_15m, source_topic)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [
                ("BTC-USD", _at(0), Decimal("100000"), Decimal("99900"), Decimal("0.002"), TOPIC),
                ("BTC-USD", _at(1), Decimal("100100"), Decimal("99950"), None, TOPIC),  # newest: no volatility
                ("ETH-EUR", _at(0), Decimal("3000"), Decimal("3000"), None, TOPIC),
                ("BTC-USD", _at(5), Decimal("1"), Decimal("1"), Decimal("0.5"), OTHER),
            ],
        )
        cur.executemany(
            "INSERT INTO crypto_spread_1m (symbol, minute, exchanges, low_vwap, high_vwap, spread_bps,"
            " cheapest_exchange, dearest_exchange, source_topic)"
            " VALUES (%s, %s, 2, 1, 1, %s, 'KRAKEN', 'COINBASE', %s)",
            [
                ("BTC-USD", _at(0), Decimal("2.5"), TOPIC),
                ("BTC-USD", _at(1), Decimal("4.25"), TOPIC),
                ("ETH-EUR", _at(0), Decimal("1.5"), TOPIC),
                ("BTC-USD", _at(9), Decimal("999"), OTHER),
            ],
        )
        cur.executemany(
            "INSERT INTO crypto_whale_alerts (trade_id, symbol, exchange, side, price, quantity, notional, threshold,"
            " event_time, source_topic) VALUES (%s, %s, 'BINANCE', 'BUY', 1, 1, %s, %s, %s, %s)",
            [
                (_id(101), "BTC-USD", Decimal("1500000"), Decimal("1000000"), _at(0, 10), TOPIC),
                (_id(102), "BTC-USD", Decimal("2000000"), Decimal("1000000"), _at(0, 50), TOPIC),
                (_id(103), "SOL-USD", Decimal("300000"), Decimal("250000"), _at(2), TOPIC),
                (_id(104), "BTC-USD", Decimal("5000000"), Decimal("1000000"), _at(10), OTHER),
            ],
        )
        cur.executemany(
            "INSERT INTO crypto_price_anomalies (trade_id, symbol, exchange, price, previous_low, previous_high,"
            " deviation_pct, event_time, source_topic) VALUES (%s, %s, %s, 1, 1, 1, 5, %s, %s)",
            [
                (_id(201), "ETH-EUR", "BINANCE", _at(3), TOPIC),
                (_id(202), "DOGE-USD", "KRAKEN", _at(3), TOPIC),
                (_id(203), "DOGE-USD", "KRAKEN", _at(4), TOPIC),
                (_id(204), "DOGE-USD", "KRAKEN", _at(4), OTHER),
            ],
        )


def _expose(conn: psycopg2.extensions.connection) -> Samples:
    families = list(market_metrics(SPEC, conn))

    class _Fixed:
        def collect(self) -> Iterator:  # noqa: ANN401
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    return parse(generate_latest(registry).decode())


def _by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """``name``'s samples by the values of ``labels``; every one has pipeline=crypto_trades."""
    found = series(samples, name)
    assert all(dict(k)["pipeline"] == "crypto_trades" for k in found), name
    return {tuple(dict(k)[label] for label in labels): v for k, v in found.items()}


def _nonzero(figures: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {k: v for k, v in figures.items() if v}


def test_market_figures_are_exactly_those_of_the_rows(settings: Settings, schema: str) -> None:
    conn = _connect(settings, schema)
    try:
        _create(conn, derived=True)
        _insert_trades(conn)
        _insert_derived(conn)
        samples = _expose(conn)
    finally:
        conn.close()

    trades = _by(samples, "txp_crypto_trades_total", "symbol", "exchange", "side")
    # every listed symbol, venue and side from 0, so that increase() sees the first trade of each
    assert set(trades) == {(s, e, side) for s in SYMBOLS for e in EXCHANGES for side in ("BUY", "SELL")}
    assert _nonzero(trades) == {
        ("BTC-USD", "COINBASE", "BUY"): 1,
        ("BTC-USD", "COINBASE", "SELL"): 1,
        ("BTC-USD", "KRAKEN", "BUY"): 2,
        ("ETH-EUR", "BINANCE", "SELL"): 1,
    }
    volume = _by(samples, "txp_crypto_base_volume_total", "symbol", "exchange")
    assert len(volume) == len(SYMBOLS) * len(EXCHANGES)
    assert _nonzero(volume) == {("BTC-USD", "COINBASE"): 0.75, ("BTC-USD", "KRAKEN"): 3, ("ETH-EUR", "BINANCE"): 10}
    notional = _by(samples, "txp_crypto_quote_notional_total", "symbol", "exchange", "quote_currency")
    assert len(notional) == len(SYMBOLS) * len(EXCHANGES)
    # labelled with the symbol's quote currency, traded or not
    assert {(k[0], k[2]) for k in notional} == {(s, i.quote) for s, i in SYMBOLS.items()}
    assert _nonzero(notional) == {
        ("BTC-USD", "COINBASE", "USD"): 75_002.75,  # 100000.5 x 0.5 + 100010 x 0.25
        ("BTC-USD", "KRAKEN", "USD"): 299_980,  # 99990 x 1 + 99995 x 2
        ("ETH-EUR", "BINANCE", "EUR"): 30_000,
    }
    assert _by(samples, "txp_crypto_last_price", "symbol", "exchange") == {
        ("BTC-USD", "COINBASE"): 100_010,
        ("BTC-USD", "KRAKEN"): 99_995,  # two trades at 12:00:30: the larger trade id is the last one
        ("ETH-EUR", "BINANCE"): 3000,
    }
    assert _by(samples, "txp_crypto_last_trade_timestamp_seconds", "symbol", "exchange") == {
        ("BTC-USD", "COINBASE"): _at(0, 40).timestamp(),
        ("BTC-USD", "KRAKEN"): _at(0, 30).timestamp(),
        ("ETH-EUR", "BINANCE"): _at(1).timestamp(),
    }
    assert _by(samples, "txp_crypto_vwap", "symbol") == {("BTC-USD",): 100_100, ("ETH-EUR",): 3000}
    assert _by(samples, "txp_crypto_vwap_15m", "symbol") == {("BTC-USD",): 99_950, ("ETH-EUR",): 3000}
    # the newest minute that has a volatility; ETH-EUR has none yet
    assert _by(samples, "txp_crypto_volatility_15m", "symbol") == {("BTC-USD",): 0.002}
    assert _by(samples, "txp_crypto_spread_bps", "symbol") == {("BTC-USD",): 4.25, ("ETH-EUR",): 1.5}
    whales = _by(samples, "txp_crypto_whale_trades_total", "symbol")
    assert whales == {**{(s,): 0.0 for s in SYMBOLS}, ("BTC-USD",): 2, ("SOL-USD",): 1}
    assert _by(samples, "txp_crypto_last_whale_notional", "symbol") == {("BTC-USD",): 2_000_000, ("SOL-USD",): 300_000}
    anomalies = _by(samples, "txp_crypto_price_anomalies_total", "symbol", "exchange")
    assert len(anomalies) == len(SYMBOLS) * len(EXCHANGES)
    assert _nonzero(anomalies) == {("ETH-EUR", "BINANCE"): 1, ("DOGE-USD", "KRAKEN"): 2}
    # every family is one of the defined metrics, and every defined metric has samples here
    names = {n.removesuffix("_total") for n, _ in samples}
    assert names == {m.name.removesuffix("_total") for m in MARKET_METRICS}


def test_missing_derived_tables_give_no_samples_and_an_empty_table_gives_zeros(settings: Settings, schema: str) -> None:
    conn = _connect(settings, schema)
    try:
        assert list(market_metrics(SPEC, conn)) == []  # nothing materialised at all
        _create(conn, derived=False)
        samples = _expose(conn)
        assert not conn.closed and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    finally:
        conn.close()
    assert {n for n, _ in samples} == {
        "txp_crypto_trades_total",
        "txp_crypto_base_volume_total",
        "txp_crypto_quote_notional_total",
    }
    assert len(samples) == len(SYMBOLS) * len(EXCHANGES) * 4  # two sides, volume, notional
    assert set(samples.values()) == {0.0}


def test_the_exporter_serves_them_beside_the_sink_families(settings: Settings, schema: str) -> None:
    """What ``txp metrics serve`` does at a scrape: both pipelines' sink families, then the market's."""
    from tx_platform.metrics import derived_families

    conn = _connect(settings, schema)
    try:
        _create(conn, derived=True)
        _insert_trades(conn)
        families = derived_families([TRANSACTIONS.with_topic("tx_mm"), SPEC], conn)
    finally:
        conn.close()
    assert [f.name for f in families] == [m.name.removesuffix("_total") for m in MARKET_METRICS]
    assert sum(s.value for f in families if f.name == "txp_crypto_trades" for s in f.samples) == 5
