"""Checks of the crypto pipeline's derived tables: Pandera schemas, reconciliation with the trades, gaps.

- :func:`candles_schema`: the OHLC invariants of every candle (low <= open, close <= high; volume,
  trade count > 0; VWAP within [low, high]; first <= last trade time, both in the candle's minute).
- :func:`reconcile_candles`: per symbol and minute, the candles against the trades stored in
  ``crypto_trades`` that the candle query has read (the offsets of its ledger): trade count,
  volume, first and last price (earliest event time, then smallest trade id; latest, then largest).
  A trade later than the candle query's watermark is stored by the sink but left out of its candle,
  so its minute shows up here (the documented late-data policy, see
  :mod:`spark_jobs.transforms.candles`).
- :func:`candle_gaps`: every minute between a symbol's first and last candle has a candle.
- Schemas of the SQL-rebuilt tables (:mod:`._derived`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from functools import cache

import pandas as pd
import pandera.pandas as pa
from psycopg2 import sql
from psycopg2.extensions import connection as Connection

from tx_platform.pipelines.crypto_trades._derived import ANOMALY_PCT
from tx_platform.pipelines.crypto_trades._market import EXCHANGES, SYMBOLS

_SYMBOLS = sorted(SYMBOLS)
_EXCHANGES = sorted(EXCHANGES)
_TIME = "datetime64[ns, UTC]"


def _time(nullable: bool = False) -> pa.Column:
    # coerced: pandas versions differ in the unit they read timestamps with (us vs ns)
    return pa.Column(_TIME, nullable=nullable, coerce=True)


def _text(*checks: pa.Check) -> pa.Column:
    # coerced: an empty result reads as object, a non-empty one as pandas' string dtype
    return pa.Column(str, list(checks), coerce=True)


def _count(*checks: pa.Check) -> pa.Column:
    return pa.Column("int64", list(checks), coerce=True)


def _positive(name: str) -> pa.Check:
    return pa.Check(lambda v: v > 0, element_wise=True, name=name)


@cache
def candles_schema() -> pa.DataFrameSchema:
    """Rows of ``crypto_candles_1m`` as read by :func:`read_table`: the OHLC invariants."""
    decimal = {name: pa.Column("object", _positive(f"{name}_positive")) for name in ("open", "high", "low", "close")}
    return pa.DataFrameSchema(
        {
            "symbol": _text(pa.Check.isin(_SYMBOLS)),
            "minute": _time(),
            **decimal,
            "volume": pa.Column("object", _positive("volume_positive")),
            "notional": pa.Column("object", _positive("notional_positive")),
            "trade_count": _count(pa.Check.gt(0, name="trade_count_positive")),
            "vwap": pa.Column("object"),
            "first_trade_time": _time(),
            "last_trade_time": _time(),
            "source_topic": _text(),
        },
        checks=[
            pa.Check(lambda df: (df["low"] <= df["open"]) & (df["open"] <= df["high"]), name="open_within_low_high"),
            pa.Check(lambda df: (df["low"] <= df["close"]) & (df["close"] <= df["high"]), name="close_within_low_high"),
            pa.Check(lambda df: (df["low"] <= df["vwap"]) & (df["vwap"] <= df["high"]), name="vwap_within_low_high"),
            pa.Check(lambda df: df["first_trade_time"] <= df["last_trade_time"], name="trade_times_ordered"),
            pa.Check(
                lambda df: (
                    (df["first_trade_time"] >= df["minute"])
                    & (df["last_trade_time"] < df["minute"] + pd.Timedelta(minutes=1))
                ),
                name="trades_within_minute",
            ),
        ],
        unique=["symbol", "minute", "source_topic"],
        strict=False,
        name="crypto_candles_1m",
    )


@cache
def symbol_metrics_schema() -> pa.DataFrameSchema:
    """Rows of ``crypto_symbol_metrics``: positive VWAPs, a non-negative volatility (NULL allowed)."""
    return pa.DataFrameSchema(
        {
            "symbol": _text(pa.Check.isin(_SYMBOLS)),
            "minute": _time(),
            "vwap": pa.Column("object", _positive("vwap_positive")),
            "vwap_15m": pa.Column("object", _positive("vwap_15m_positive")),
            "volatility_15m": pa.Column(
                "object", pa.Check(lambda v: v >= 0, element_wise=True, name="volatility_not_negative"), nullable=True
            ),
        },
        unique=["symbol", "minute", "source_topic"],
        strict=False,
        name="crypto_symbol_metrics",
    )


@cache
def spread_schema() -> pa.DataFrameSchema:
    """Rows of ``crypto_spread_1m``: at least 2 exchanges, low <= high, spread_bps >= 0, two venues."""
    return pa.DataFrameSchema(
        {
            "symbol": _text(pa.Check.isin(_SYMBOLS)),
            "minute": _time(),
            "exchanges": _count(pa.Check.in_range(2, len(_EXCHANGES), name="exchanges_2_or_more")),
            "low_vwap": pa.Column("object", _positive("low_vwap_positive")),
            "high_vwap": pa.Column("object", _positive("high_vwap_positive")),
            "spread_bps": pa.Column(
                "object", pa.Check(lambda v: v >= 0, element_wise=True, name="spread_bps_not_negative")
            ),
            "cheapest_exchange": _text(pa.Check.isin(_EXCHANGES)),
            "dearest_exchange": _text(pa.Check.isin(_EXCHANGES)),
        },
        checks=[
            pa.Check(lambda df: df["low_vwap"] <= df["high_vwap"], name="low_le_high"),
            pa.Check(lambda df: df["cheapest_exchange"] != df["dearest_exchange"], name="two_exchanges"),
        ],
        unique=["symbol", "minute", "source_topic"],
        strict=False,
        name="crypto_spread_1m",
    )


@cache
def whale_alerts_schema() -> pa.DataFrameSchema:
    """Rows of ``crypto_whale_alerts``: notional is price x quantity and reaches the threshold."""
    return pa.DataFrameSchema(
        {
            "trade_id": _text(),
            "symbol": _text(pa.Check.isin(_SYMBOLS)),
            "exchange": _text(pa.Check.isin(_EXCHANGES)),
            "side": _text(pa.Check.isin(["BUY", "SELL"])),
            "notional": pa.Column("object"),
            "threshold": pa.Column("object", _positive("threshold_positive")),
            "event_time": _time(),
        },
        checks=[
            pa.Check(lambda df: df["notional"] >= df["threshold"], name="notional_reaches_threshold"),
            pa.Check(lambda df: df["notional"] == df["price"] * df["quantity"], name="notional_is_price_x_quantity"),
        ],
        unique=["trade_id"],
        strict=False,
        name="crypto_whale_alerts",
    )


@cache
def price_anomalies_schema() -> pa.DataFrameSchema:
    """Rows of ``crypto_price_anomalies``: the price is more than ANOMALY_PCT % outside the previous range."""
    return pa.DataFrameSchema(
        {
            "trade_id": _text(),
            "symbol": _text(pa.Check.isin(_SYMBOLS)),
            "price": pa.Column("object", _positive("price_positive")),
            "deviation_pct": pa.Column(
                "object", pa.Check(lambda v: abs(v) > ANOMALY_PCT, element_wise=True, name="beyond_anomaly_pct")
            ),
            "event_time": _time(),
        },
        checks=[
            pa.Check(
                lambda df: (df["price"] > df["previous_high"]) | (df["price"] < df["previous_low"]),
                name="outside_previous_range",
            ),
            pa.Check(lambda df: df["previous_low"] <= df["previous_high"], name="previous_range_ordered"),
        ],
        unique=["trade_id"],
        strict=False,
        name="crypto_price_anomalies",
    )


#: Each derived table's schema and the columns it is read in order of.
SCHEMAS = {
    "crypto_candles_1m": (candles_schema, ("symbol", "minute")),
    "crypto_symbol_metrics": (symbol_metrics_schema, ("symbol", "minute")),
    "crypto_spread_1m": (spread_schema, ("symbol", "minute")),
    "crypto_whale_alerts": (whale_alerts_schema, ("event_time", "trade_id")),
    "crypto_price_anomalies": (price_anomalies_schema, ("event_time", "trade_id")),
}


def read_table(conn: Connection, table: str, source_topic: str) -> pd.DataFrame:
    """The rows of derived ``table`` (a key of :data:`SCHEMAS`) from ``source_topic``, as pandas.

    Decimals stay :class:`~decimal.Decimal` (exactness over speed), times are UTC, uuids strings.
    """
    if table not in SCHEMAS:
        msg = f"{table!r} is not a derived table of the crypto pipeline; one of {', '.join(SCHEMAS)}"
        raise KeyError(msg)
    order = sql.SQL(", ").join(map(sql.Identifier, SCHEMAS[table][1]))
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT * FROM {} WHERE source_topic = %s ORDER BY {}").format(sql.Identifier(table), order),
            (source_topic,),
        )
        columns = [d.name for d in cur.description]
        frame = pd.DataFrame(cur.fetchall(), columns=columns)
    for column in frame.columns:
        if column in ("minute", "event_time") or column.endswith(("_time", "_at")):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        elif column == "trade_id":
            frame[column] = frame[column].astype(str)
    for column in ("trade_count", "exchanges"):
        if column in frame.columns:
            frame[column] = frame[column].astype("int64")
    return frame


@dataclass(frozen=True)
class CandleMismatch:
    """One symbol and minute where the candle and the trades disagree (None: that side has no row)."""

    symbol: str
    minute: datetime
    trades: tuple[int, Decimal, Decimal, Decimal] | None  # (count, volume, first price, last price) of the trades
    candle: tuple[int, Decimal, Decimal, Decimal] | None  # (trade_count, volume, open, close) of the candle


@dataclass(frozen=True)
class CandleReconciliation:
    """Candles of one topic against the stored trades the candle query has read."""

    #: Next offset per partition the candle query's latest ledger row covers (empty: it never ran).
    covered: dict[int, int]
    minutes_compared: int
    mismatches: list[CandleMismatch] = field(default_factory=list)
    #: Partitions where the sink has stored fewer offsets than the candles cover: {partition: (sink, candles)}.
    sink_behind: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every compared minute agrees, and the sink has stored every trade the candles counted."""
        return not self.mismatches and not self.sink_behind

    def describe(self, limit: int = 10) -> str:
        """A few lines for a check's metadata or a failure message."""
        lines = [f"{len(self.mismatches)} mismatching minutes of {self.minutes_compared}"]
        lines += [f"sink behind the candles on partition {p}: {s} < {c}" for p, (s, c) in self.sink_behind.items()]
        lines += [f"{m.symbol} {m.minute:%Y-%m-%d %H:%M}: trades {m.trades} vs candle {m.candle}" for m in
                  self.mismatches[:limit]]  # fmt: skip
        return "\n".join(lines)


_RECONCILE = """
WITH latest AS (
    SELECT end_offsets -> %(topic)s AS offsets FROM stream_batches
    WHERE query = %(query)s AND source_topic = %(topic)s
    ORDER BY batch_id DESC LIMIT 1
), covered AS (
    SELECT key::int AS partition, value::bigint AS next_offset FROM latest, jsonb_each_text(latest.offsets)
), raw AS (
    SELECT t.symbol, date_trunc('minute', t.event_time, 'UTC') AS minute, count(*) AS trade_count,
           sum(t.quantity) AS volume,
           (array_agg(t.price ORDER BY t.event_time, t.trade_id))[1] AS open,
           (array_agg(t.price ORDER BY t.event_time DESC, t.trade_id DESC))[1] AS close
    FROM crypto_trades t
    JOIN covered c ON c.partition = t.kafka_partition AND t.kafka_offset < c.next_offset
    WHERE t.kafka_topic = %(topic)s
    GROUP BY 1, 2
), candles AS (
    SELECT symbol, minute, trade_count, volume, open, close FROM crypto_candles_1m WHERE source_topic = %(topic)s
)
SELECT coalesce(r.symbol, c.symbol), coalesce(r.minute, c.minute),
       r.trade_count, r.volume, r.open, r.close, c.trade_count, c.volume, c.open, c.close,
       (r.trade_count, r.volume, r.open, r.close) IS DISTINCT FROM (c.trade_count, c.volume, c.open, c.close)
FROM raw r
FULL JOIN candles c ON c.symbol = r.symbol AND c.minute = r.minute
ORDER BY 1, 2
"""


def reconcile_candles(conn: Connection, source_topic: str, query: str) -> CandleReconciliation:
    """Compare the candles of ``source_topic`` with its trades in ``crypto_trades``, minute by minute.

    Only trades at offsets the candle query ``query`` has committed count (its latest
    ``stream_batches`` row), so a sink that ran further ahead causes no false alarm; a sink that is
    behind the candles is reported in ``sink_behind``.
    """
    with conn.cursor() as cur:
        cur.execute(_RECONCILE, {"topic": source_topic, "query": query})
        rows = cur.fetchall()
        cur.execute(
            """
            SELECT end_offsets -> %(topic)s FROM stream_batches
            WHERE query = %(query)s AND source_topic = %(topic)s ORDER BY batch_id DESC LIMIT 1
            """,
            {"topic": source_topic, "query": query},
        )
        found = cur.fetchone()
        covered = {int(p): int(o) for p, o in ((found[0] or {}) if found else {}).items()}
        cur.execute("SELECT partition, next_offset FROM sink_offsets WHERE topic = %s", (source_topic,))
        sink = {int(p): int(o) for p, o in cur.fetchall()}
    behind = {p: (sink.get(p, 0), c) for p, c in sorted(covered.items()) if sink.get(p, 0) < c}
    mismatches = []
    for symbol, minute, *values, distinct in rows:
        if distinct:
            raw, candle = values[:4], values[4:]
            mismatches.append(
                CandleMismatch(
                    symbol,
                    minute,
                    None if raw[0] is None else (int(raw[0]), raw[1], raw[2], raw[3]),
                    None if candle[0] is None else (int(candle[0]), candle[1], candle[2], candle[3]),
                )
            )
    return CandleReconciliation(covered, len(rows), mismatches, behind)


def candle_gaps(conn: Connection, source_topic: str) -> list[tuple[str, datetime]]:
    """``(symbol, minute)`` of every minute without a candle between a symbol's first and last candle."""
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH bounds AS (
                SELECT symbol, min(minute) AS first, max(minute) AS last
                FROM crypto_candles_1m WHERE source_topic = %(topic)s GROUP BY symbol
            )
            SELECT b.symbol, m.minute
            FROM bounds b, generate_series(b.first, b.last, interval '1 minute') AS m (minute)
            WHERE NOT EXISTS (
                SELECT 1 FROM crypto_candles_1m c
                WHERE c.source_topic = %(topic)s AND c.symbol = b.symbol AND c.minute = m.minute
            )
            ORDER BY 1, 2
            """,
            {"topic": source_topic},
        )
        return [(symbol, minute) for symbol, minute in cur.fetchall()]
