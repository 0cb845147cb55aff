"""The crypto pipeline's derived tables that SQL rebuilds: metrics, spread, whale alerts, price anomalies.

Each rebuild replaces its table's rows in one transaction (readers see the old rows or the new,
never a mix) from ``crypto_trades`` and ``crypto_candles_1m`` (the candles come from the Spark
streaming query, see :mod:`spark_jobs.transforms.candles`). Full rebuilds are fine at demo scale
(a few thousand trades a run, a few hundred candles); a production deployment would rebuild the
minutes that changed since the last run instead.

Every derived row carries the ``source_topic`` its trades came from. ``source_topic=None``
rebuilds every topic present; a topic rebuilds only that topic's rows.

**Price anomalies.** A trade whose price lies more than :data:`ANOMALY_PCT` percent outside the
previous minute's [low, high] candle of its symbol is flagged in ``crypto_price_anomalies``, not
rejected: exchanges do print such trades, and rejecting them would make volume and VWAP disagree
with the venue.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from psycopg2 import sql
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor
from psycopg2.extras import execute_values

from tx_platform.pipelines.crypto_trades._market import SYMBOLS

#: A trade more than this many percent outside the previous minute's [low, high] is a price anomaly.
ANOMALY_PCT = Decimal(2)
#: Minutes in the rolling window of ``vwap_15m`` and ``volatility_15m`` (ending at the row's minute).
ROLLING_MINUTES = 15

#: Tables rebuilt here, in the order :func:`rebuild_market_tables` rebuilds them.
MARKET_TABLES = ("crypto_symbol_metrics", "crypto_spread_1m", "crypto_whale_alerts", "crypto_price_anomalies")

_SYMBOL_METRICS = """
INSERT INTO crypto_symbol_metrics (symbol, minute, vwap, vwap_15m, volatility_15m, source_topic)
WITH candles AS (
    SELECT source_topic, symbol, minute, vwap, notional, volume, close,
           lag(minute) OVER w AS previous_minute, lag(close) OVER w AS previous_close
    FROM crypto_candles_1m
    WHERE (%(topic)s::text IS NULL OR source_topic = %(topic)s)
    WINDOW w AS (PARTITION BY source_topic, symbol ORDER BY minute)
), returns AS (
    -- a one-minute log return needs the candle of the minute just before: a gap has no return
    SELECT *, CASE WHEN previous_minute = minute - interval '1 minute' THEN ln(close / previous_close) END AS log_return
    FROM candles
)
SELECT symbol, minute, vwap,
       sum(notional) OVER rolling / sum(volume) OVER rolling,
       stddev_samp(log_return) OVER rolling,  -- NULL with fewer than 2 returns
       source_topic
FROM returns
WINDOW rolling AS (
    PARTITION BY source_topic, symbol ORDER BY minute
    RANGE BETWEEN %(preceding)s::interval PRECEDING AND CURRENT ROW
)
"""

_SPREAD = """
INSERT INTO crypto_spread_1m (
    symbol, minute, exchanges, low_vwap, high_vwap, spread_bps, cheapest_exchange, dearest_exchange, source_topic
)
WITH per_exchange AS (
    SELECT kafka_topic AS source_topic, symbol, date_trunc('minute', event_time, 'UTC') AS minute, exchange,
           sum(price * quantity) / sum(quantity) AS vwap
    FROM crypto_trades
    WHERE (%(topic)s::text IS NULL OR kafka_topic = %(topic)s)
    GROUP BY 1, 2, 3, 4
), per_minute AS (
    -- ties: the cheapest is the first exchange by name, the dearest the last, so they always differ
    SELECT source_topic, symbol, minute, count(*) AS exchanges, min(vwap) AS low_vwap, max(vwap) AS high_vwap,
           (array_agg(exchange ORDER BY vwap, exchange))[1] AS cheapest_exchange,
           (array_agg(exchange ORDER BY vwap DESC, exchange DESC))[1] AS dearest_exchange
    FROM per_exchange
    GROUP BY 1, 2, 3
    HAVING count(*) >= 2
)
SELECT symbol, minute, exchanges, low_vwap, high_vwap,
       (high_vwap - low_vwap) * 10000 / ((high_vwap + low_vwap) / 2),
       cheapest_exchange, dearest_exchange, source_topic
FROM per_minute
"""

_WHALE_ALERTS = """
INSERT INTO crypto_whale_alerts (
    trade_id, symbol, exchange, side, price, quantity, notional, threshold, event_time, source_topic
)
SELECT t.trade_id, t.symbol, t.exchange, t.side, t.price, t.quantity, t.price * t.quantity, i.whale_notional,
       t.event_time, t.kafka_topic
FROM crypto_trades t
JOIN crypto_instruments i ON i.symbol = t.symbol
WHERE t.price * t.quantity >= i.whale_notional AND (%(topic)s::text IS NULL OR t.kafka_topic = %(topic)s)
"""

_PRICE_ANOMALIES = """
INSERT INTO crypto_price_anomalies (
    trade_id, symbol, exchange, price, previous_low, previous_high, deviation_pct, event_time, source_topic
)
SELECT t.trade_id, t.symbol, t.exchange, t.price, c.low, c.high,
       CASE WHEN t.price > c.high THEN (t.price - c.high) * 100 / c.high ELSE (t.price - c.low) * 100 / c.low END,
       t.event_time, t.kafka_topic
FROM crypto_trades t
JOIN crypto_candles_1m c
  ON c.source_topic = t.kafka_topic AND c.symbol = t.symbol
 AND c.minute = date_trunc('minute', t.event_time, 'UTC') - interval '1 minute'
WHERE (t.price > c.high * (1 + %(pct)s::numeric / 100) OR t.price < c.low * (1 - %(pct)s::numeric / 100))
  AND (%(topic)s::text IS NULL OR t.kafka_topic = %(topic)s)
"""


@contextmanager
def _transaction(conn: Connection) -> Iterator[Cursor]:
    """A cursor whose work is committed at the end (rolled back on error).

    Not ``with conn``: the caller's connection may already be inside one (``PostgresResource.connection()``),
    and psycopg2 refuses to enter it twice. Whatever the caller left uncommitted is committed too.
    """
    try:
        with conn.cursor() as cur:
            yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise


def _replace(conn: Connection, table: str, insert: str, source_topic: str | None, **params: object) -> int:
    """Delete ``table``'s rows in scope and run ``insert``, in one transaction; returns rows inserted."""
    with _transaction(conn) as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE (%(topic)s::text IS NULL OR source_topic = %(topic)s)").format(
                sql.Identifier(table)
            ),
            {"topic": source_topic},
        )
        cur.execute(insert, {"topic": source_topic, **params})
        return int(cur.rowcount)


def sync_instruments(conn: Connection) -> int:
    """Make ``crypto_instruments`` hold exactly the instruments of ``_market.SYMBOLS``; returns how many."""
    with _transaction(conn) as cur:
        execute_values(
            cur,
            """
            INSERT INTO crypto_instruments (symbol, base, quote, whale_notional) VALUES %s
            ON CONFLICT (symbol) DO UPDATE SET
                base = EXCLUDED.base, quote = EXCLUDED.quote, whale_notional = EXCLUDED.whale_notional,
                updated_at = now()
            WHERE (crypto_instruments.base, crypto_instruments.quote, crypto_instruments.whale_notional)
                  IS DISTINCT FROM (EXCLUDED.base, EXCLUDED.quote, EXCLUDED.whale_notional)
            """,
            [(i.symbol, i.base, i.quote, i.whale_notional) for i in SYMBOLS.values()],
        )
        cur.execute("DELETE FROM crypto_instruments WHERE NOT (symbol = ANY(%s))", (list(SYMBOLS),))
    return len(SYMBOLS)


def rebuild_symbol_metrics(conn: Connection, source_topic: str | None = None) -> int:
    """Rebuild ``crypto_symbol_metrics`` from the candles: per symbol and minute, the minute's VWAP,
    ``vwap_15m`` (notional over volume of the 15 minutes ending at the minute) and ``volatility_15m``
    (sample standard deviation of the one-minute log returns of close in those 15 minutes; a return
    needs the previous minute's candle; NULL with fewer than 2 returns). Returns rows written."""
    preceding = f"{ROLLING_MINUTES - 1} minutes"
    return _replace(conn, "crypto_symbol_metrics", _SYMBOL_METRICS, source_topic, preceding=preceding)


def rebuild_spread(conn: Connection, source_topic: str | None = None) -> int:
    """Rebuild ``crypto_spread_1m`` from the trades: per symbol and minute with at least 2 exchanges,
    the lowest and highest exchange VWAP, ``spread_bps = (high - low) x 1e4 / mid`` and which exchanges
    they are. Returns rows written."""
    return _replace(conn, "crypto_spread_1m", _SPREAD, source_topic)


def rebuild_whale_alerts(conn: Connection, source_topic: str | None = None) -> int:
    """Sync the instruments, then rebuild ``crypto_whale_alerts``: every trade whose price x quantity
    reaches its symbol's ``whale_notional``. Returns rows written."""
    sync_instruments(conn)
    return _replace(conn, "crypto_whale_alerts", _WHALE_ALERTS, source_topic)


def rebuild_price_anomalies(conn: Connection, source_topic: str | None = None) -> int:
    """Rebuild ``crypto_price_anomalies``: trades more than :data:`ANOMALY_PCT` % outside the previous
    minute's [low, high] candle of their symbol (flagged, not rejected: exchanges do print such trades,
    and rejecting them would make volume and VWAP disagree with the venue). Returns rows written."""
    return _replace(conn, "crypto_price_anomalies", _PRICE_ANOMALIES, source_topic, pct=ANOMALY_PCT)


def rebuild_market_tables(conn: Connection, source_topic: str | None = None) -> dict[str, int]:
    """Sync the instruments and rebuild every table of :data:`MARKET_TABLES` (one transaction each).

    Returns rows written per table. The candles must be there already (the Spark candle query).
    """
    return {
        "crypto_instruments": sync_instruments(conn),
        "crypto_symbol_metrics": rebuild_symbol_metrics(conn, source_topic),
        "crypto_spread_1m": rebuild_spread(conn, source_topic),
        "crypto_whale_alerts": rebuild_whale_alerts(conn, source_topic),
        "crypto_price_anomalies": rebuild_price_anomalies(conn, source_topic),
    }
