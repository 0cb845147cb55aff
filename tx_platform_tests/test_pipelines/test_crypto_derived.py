"""The crypto pipeline's SQL rebuilds on a small hand-made market, against the real Postgres.

The trades are written straight into ``crypto_trades`` and their candles (computed by the
independent reference) through the candle query's own upsert, all under a topic of this test's
own, so every expected figure below is exact and worked out by hand.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tx_platform.pipelines import CRYPTO_TRADES
from tx_platform_tests.test_pipelines._candles_reference import reference_candles

pytestmark = pytest.mark.integration

M0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)


def minute(n: int) -> datetime:
    return M0 + timedelta(minutes=n)


#: (minute, second, symbol, exchange, price, quantity) — prices and sizes chosen so VWAPs divide exactly.
MARKET = [
    # BTC-USD, minute 0: COINBASE 100.5, KRAKEN (99 + 100) / 2 = 99.5, BINANCE 100 -> spread 1 / 100 = 100 bps
    (0, 10, "BTC-USD", "COINBASE", "100.5", "1"),
    (0, 20, "BTC-USD", "KRAKEN", "99", "1"),
    (0, 30, "BTC-USD", "KRAKEN", "100", "1"),
    (0, 40, "BTC-USD", "BINANCE", "100", "2"),
    # minute 1: two venues at the same VWAP -> 0 bps; cheapest is the first by name, dearest the last
    (1, 10, "BTC-USD", "COINBASE", "101", "2"),
    (1, 20, "BTC-USD", "BITSTAMP", "101", "3"),
    # minutes 2, 4 and 16: one venue, no spread row; minute 3 and 5..15 have no candle
    (2, 10, "BTC-USD", "COINBASE", "102", "10"),
    (4, 10, "BTC-USD", "COINBASE", "103", "5"),
    (16, 10, "BTC-USD", "COINBASE", "104", "5"),
    # ETH-USD on one venue: minute 0 is [2000, 2050]; minute 1 prints two anomalies (2132 = +4 %, 1940 = -3 %)
    # and three that are not: 2080, 2091 (exactly +2 %) and 1960 (exactly -2 %)
    (0, 10, "ETH-USD", "KRAKEN", "2000", "1"),
    (0, 20, "ETH-USD", "KRAKEN", "2050", "1"),
    (1, 5, "ETH-USD", "KRAKEN", "2132", "1"),
    (1, 15, "ETH-USD", "KRAKEN", "1940", "1"),
    (1, 25, "ETH-USD", "KRAKEN", "2080", "4"),
    (1, 35, "ETH-USD", "KRAKEN", "2091", "1"),
    (1, 45, "ETH-USD", "KRAKEN", "1960", "1"),
    # whales: SOL-USD exactly at its 250,000 threshold (and one just below), DOGE-USD 120,000 >= 100,000
    (0, 10, "SOL-USD", "BINANCE", "200", "1250"),
    (0, 20, "SOL-USD", "BINANCE", "200", "1249.999"),
    (0, 30, "DOGE-USD", "KRAKEN", "0.2", "600000"),
]


def _trades() -> list[dict[str, Any]]:
    return [
        {
            "trade_id": str(uuid.uuid4()),
            "exchange": exchange,
            "symbol": symbol,
            "side": "BUY" if n % 2 else "SELL",
            "price": Decimal(price),
            "quantity": Decimal(quantity),
            "quote_currency": "USD",
            "taker_order_id": f"o-{n}",
            "event_time": minute(m) + timedelta(seconds=s),
        }
        for n, (m, s, symbol, exchange, price, quantity) in enumerate(MARKET)
    ]


@pytest.fixture
def market(stack_env: dict[str, str]) -> Iterator[tuple[Any, str, list[dict[str, Any]]]]:
    """A warehouse connection, a topic name of this test's own, and its trades and candles stored."""
    from psycopg2.extras import execute_values

    from spark_jobs.transforms import CANDLES
    from spark_jobs.transforms._candle_store import commit_candles
    from tx_platform.config import load_settings
    from tx_platform.warehouse import connect, ensure_schema

    dsn = load_settings().dsn()
    ensure_schema(dsn, [CRYPTO_TRADES])
    topic = f"crypto_hand_{uuid.uuid4().hex[:8]}"
    trades = _trades()
    conn = connect(dsn)
    with conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO crypto_trades (trade_id, exchange, symbol, side, price, quantity, quote_currency, "
            "taker_order_id, event_time, kafka_topic, kafka_partition, kafka_offset) VALUES %s",
            [(*t.values(), topic, 0, n) for n, t in enumerate(trades)],
        )

    def times(symbol: str, start: datetime) -> list[datetime]:
        return sorted(t["event_time"] for t in trades if t["symbol"] == symbol and start <= t["event_time"] < start
                      + timedelta(minutes=1))  # fmt: skip

    candles = [
        (symbol, start, c.open, c.high, c.low, c.close, c.volume, c.notional, c.trade_count,
         times(symbol, start)[0], times(symbol, start)[-1])
        for (symbol, start), c in sorted(reference_candles(trades).items())
    ]  # fmt: skip
    commit_candles(
        conn, table=CANDLES.table, ledger=CANDLES.ledger, query=CANDLES.query_name(CRYPTO_TRADES),
        source_topic=topic, batch_id=0, end_offsets={topic: {"0": len(trades)}}, candles=candles,
    )  # fmt: skip
    try:
        yield conn, topic, trades
    finally:
        conn.close()


def _rows(conn: Any, query: str, topic: str) -> list[tuple]:  # noqa: ANN401
    with conn.cursor() as cur:
        cur.execute(query, (topic,))
        return cur.fetchall()


def _by_price(trades: list[dict[str, Any]], symbol: str, price: str) -> dict[str, Any]:
    return next(t for t in trades if t["symbol"] == symbol and t["price"] == Decimal(price))


def test_rebuilds_give_the_hand_computed_vwap_spread_whales_and_anomalies(market: tuple) -> None:
    from tx_platform.pipelines.crypto_trades._checks import (
        price_anomalies_schema,
        read_table,
        spread_schema,
        symbol_metrics_schema,
        whale_alerts_schema,
    )
    from tx_platform.pipelines.crypto_trades._derived import rebuild_market_tables

    conn, topic, trades = market
    counts = rebuild_market_tables(conn, topic)
    assert counts == {
        "crypto_instruments": 6,
        "crypto_symbol_metrics": 9,  # BTC 5 candles, ETH 2, SOL 1, DOGE 1
        "crypto_spread_1m": 2,
        "crypto_whale_alerts": 2,
        "crypto_price_anomalies": 2,
    }

    metrics = _rows(
        conn,
        "SELECT symbol, minute, vwap, vwap_15m, volatility_15m FROM crypto_symbol_metrics WHERE source_topic = %s "
        "ORDER BY symbol, minute",
        topic,
    )
    r1, r2 = math.log(101 / 100), math.log(102 / 101)  # BTC's one-minute log returns at minutes 1 and 2
    expected = [
        ("BTC-USD", minute(0), Decimal("99.9"), Decimal("99.9"), None),  # 499.5 / 5
        ("BTC-USD", minute(1), Decimal("101"), Decimal("100.45"), None),  # (499.5 + 505) / 10; one return
        ("BTC-USD", minute(2), Decimal("102"), Decimal("101.225"), statistics.stdev([r1, r2])),  # 2024.5 / 20
        ("BTC-USD", minute(4), Decimal("103"), Decimal("101.58"), statistics.stdev([r1, r2])),  # 2539.5 / 25; no return
        # 15 minutes ending at 12:16 start at 12:02: (1020 + 515 + 520) / 20; only the return at 12:02 is in them
        ("BTC-USD", minute(16), Decimal("104"), Decimal("102.75"), None),
        ("DOGE-USD", minute(0), Decimal("0.2"), Decimal("0.2"), None),
        ("ETH-USD", minute(0), Decimal("2025"), Decimal("2025"), None),
        ("ETH-USD", minute(1), Decimal("2055.375"), Decimal("2049.3"), None),  # 16443 / 8; (4050 + 16443) / 10
        ("SOL-USD", minute(0), Decimal("200"), Decimal("200"), None),
    ]
    assert [row[:4] for row in metrics] == [row[:4] for row in expected]
    for row, want in zip(metrics, expected, strict=True):
        if want[4] is None:
            assert row[4] is None, row
        else:
            assert float(row[4]) == pytest.approx(want[4], rel=1e-12), row

    spread = _rows(
        conn,
        "SELECT symbol, minute, exchanges, low_vwap, high_vwap, spread_bps, cheapest_exchange, dearest_exchange "
        "FROM crypto_spread_1m WHERE source_topic = %s ORDER BY symbol, minute",
        topic,
    )
    assert spread == [
        ("BTC-USD", minute(0), 3, Decimal("99.5"), Decimal("100.5"), Decimal(100), "KRAKEN", "COINBASE"),
        ("BTC-USD", minute(1), 2, Decimal(101), Decimal(101), Decimal(0), "BITSTAMP", "COINBASE"),
    ]

    whales = _rows(
        conn,
        "SELECT trade_id::text, symbol, exchange, side, price, quantity, notional, threshold, event_time "
        "FROM crypto_whale_alerts WHERE source_topic = %s ORDER BY symbol",
        topic,
    )
    doge, sol = _by_price(trades, "DOGE-USD", "0.2"), _by_price(trades, "SOL-USD", "200")
    assert whales == [
        (doge["trade_id"], "DOGE-USD", "KRAKEN", doge["side"], Decimal("0.2"), Decimal(600000), Decimal(120000),
         Decimal(100000), doge["event_time"]),
        (sol["trade_id"], "SOL-USD", "BINANCE", sol["side"], Decimal(200), Decimal(1250), Decimal(250000),
         Decimal(250000), sol["event_time"]),
    ]  # fmt: skip

    anomalies = _rows(
        conn,
        "SELECT trade_id::text, symbol, exchange, price, previous_low, previous_high, deviation_pct, event_time "
        "FROM crypto_price_anomalies WHERE source_topic = %s ORDER BY event_time",
        topic,
    )
    above, below = _by_price(trades, "ETH-USD", "2132"), _by_price(trades, "ETH-USD", "1940")
    assert anomalies == [
        (above["trade_id"], "ETH-USD", "KRAKEN", Decimal(2132), Decimal(2000), Decimal(2050), Decimal(4),
         above["event_time"]),
        (below["trade_id"], "ETH-USD", "KRAKEN", Decimal(1940), Decimal(2000), Decimal(2050), Decimal(-3),
         below["event_time"]),
    ]  # fmt: skip

    # every table passes its Pandera checks
    for table, schema, rows in (
        ("crypto_symbol_metrics", symbol_metrics_schema(), 9),
        ("crypto_spread_1m", spread_schema(), 2),
        ("crypto_whale_alerts", whale_alerts_schema(), 2),
        ("crypto_price_anomalies", price_anomalies_schema(), 2),
    ):
        frame = read_table(conn, table, topic)
        assert len(frame) == rows
        schema.validate(frame, lazy=True)


def test_rebuilds_are_idempotent_and_keep_to_their_topic(market: tuple) -> None:
    from tx_platform.pipelines.crypto_trades._derived import MARKET_TABLES, rebuild_market_tables

    conn, topic, _ = market

    def snapshot(of: str) -> dict[str, list[tuple]]:
        return {
            table: _rows(conn, f"SELECT * FROM {table} WHERE source_topic = %s ORDER BY 1, 2", of)  # noqa: S608
            for table in MARKET_TABLES
        }

    first = rebuild_market_tables(conn, topic)
    before = snapshot(topic)
    assert {t: len(rows) for t, rows in before.items()} == {t: first[t] for t in MARKET_TABLES}
    # another topic's rebuild, then this topic's again: the same rows (computed_at aside)
    other = f"crypto_other_{uuid.uuid4().hex[:8]}"
    assert rebuild_market_tables(conn, other)["crypto_whale_alerts"] == 0
    assert rebuild_market_tables(conn, topic) == first
    after = snapshot(topic)

    def without_computed_at(rows: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
        return {t: [r[:-1] for r in rows[t]] for t in rows}  # computed_at is each table's last column

    assert without_computed_at(after) == without_computed_at(before)


def test_candle_checks_on_the_hand_made_market(market: tuple) -> None:
    from spark_jobs.transforms import CANDLES
    from tx_platform.pipelines.crypto_trades._checks import candle_gaps, candles_schema, read_table, reconcile_candles

    conn, topic, trades = market
    report = reconcile_candles(conn, topic, CANDLES.query_name(CRYPTO_TRADES))
    assert (report.mismatches, report.minutes_compared, report.covered) == ([], 9, {0: len(trades)})
    # the trades were written without a sink, so no sink offsets cover them
    assert report.sink_behind == {0: (0, len(trades))}
    assert not report.ok
    # BTC-USD trades at 12:00-12:02, 12:04 and 12:16: 12:03 and 12:05..12:15 have no candle
    assert candle_gaps(conn, topic) == [("BTC-USD", minute(3)), *(("BTC-USD", minute(m)) for m in range(5, 16))]
    frame = read_table(conn, "crypto_candles_1m", topic)
    candles_schema().validate(frame, lazy=True)
    assert len(frame) == 9

    # a candle that disagrees with its trades is named, with both sides
    with conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE crypto_candles_1m SET trade_count = trade_count + 1, close = 1 "
            "WHERE source_topic = %s AND symbol = 'ETH-USD' AND minute = %s",
            (topic, minute(1)),
        )
    report = reconcile_candles(conn, topic, CANDLES.query_name(CRYPTO_TRADES))
    assert [(m.symbol, m.minute, m.trades, m.candle) for m in report.mismatches] == [
        (
            "ETH-USD",
            minute(1),
            (5, Decimal(8), Decimal(2132), Decimal(1960)),
            (6, Decimal(8), Decimal(2132), Decimal(1)),
        )
    ]
