"""The crypto market as Prometheus metrics: the `crypto_trades` pipeline's own families for the exporter.

``market_metrics(spec, conn)`` is the spec's ``derived_metrics``: ``txp metrics serve`` calls it at
every scrape, inside its Postgres read (autocommit, read-only, under a statement timeout), and adds
what it returns to the sink's families. Every figure is read from the warehouse at that moment:

- counters over the pipeline's table (trades, base volume, quote notional), whale alerts and price
  anomalies: they only grow while the table does, and start at 0 for every listed symbol and venue,
  so that ``increase()`` sees the first trade of each;
- gauges of the newest state: last price per symbol and venue, the newest minute's VWAP, 15-minute
  volatility and cross-exchange spread per symbol, the notional of the newest whale trade.

Every figure is that of ``spec.topic`` (the pipeline's table by ``kafka_topic``, the derived
tables by ``source_topic``): a test's topic never shows up under the deployment's pipeline. A
derived table that does not exist yet (its assets were never materialised) yields no samples, not
an error. The counters aggregate the whole table at each
scrape: cheap at the scale of the local stack, bounded by the exporter's statement timeout beyond.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import Metric as MetricFamily

from tx_platform.metrics import Metric
from tx_platform.pipelines._spec import PipelineSpec
from tx_platform.pipelines.crypto_trades._market import EXCHANGES, SYMBOLS

_P = ("pipeline",)

# -- over the pipeline's table (crypto_trades) ------------------------------------------------------
CRYPTO_TRADES_TOTAL = Metric(
    "txp_crypto_trades_total",
    "Trades stored in crypto_trades, by symbol, exchange and taker side.",
    "counter",
    (*_P, "symbol", "exchange", "side"),
)
CRYPTO_BASE_VOLUME_TOTAL = Metric(
    "txp_crypto_base_volume_total",
    "Quantity traded, in the symbol's base asset (BTC for BTC-USD), by symbol and exchange.",
    "counter",
    (*_P, "symbol", "exchange"),
)
CRYPTO_QUOTE_NOTIONAL_TOTAL = Metric(
    "txp_crypto_quote_notional_total",
    "Notional traded (price x quantity), in the symbol's quote currency, by symbol and exchange; "
    "never add up different quote currencies.",
    "counter",
    (*_P, "symbol", "exchange", "quote_currency"),
)
CRYPTO_LAST_PRICE = Metric(
    "txp_crypto_last_price",
    "Price of the newest trade (by event time), in the quote currency, by symbol and exchange.",
    "gauge",
    (*_P, "symbol", "exchange"),
)
CRYPTO_LAST_TRADE_TIMESTAMP = Metric(
    "txp_crypto_last_trade_timestamp_seconds",
    "Unix time (seconds) of the newest trade's event time, by symbol and exchange.",
    "gauge",
    (*_P, "symbol", "exchange"),
)

# -- over the derived tables --------------------------------------------------------------------------
CRYPTO_VWAP = Metric(
    "txp_crypto_vwap",
    "Volume-weighted average price of the newest minute with trades (crypto_symbol_metrics), in the quote "
    "currency, by symbol.",
    "gauge",
    (*_P, "symbol"),
)
CRYPTO_VWAP_15M = Metric(
    "txp_crypto_vwap_15m",
    "Notional-weighted average price over the 15 minutes ending at the newest minute, in the quote currency, "
    "by symbol.",
    "gauge",
    (*_P, "symbol"),
)
CRYPTO_VOLATILITY_15M = Metric(
    "txp_crypto_volatility_15m",
    "Sample standard deviation of 1-minute log returns of the close over the 15 minutes ending at the newest "
    "minute that has one (a ratio: 0.001 is 0.1 %), by symbol.",
    "gauge",
    (*_P, "symbol"),
)
CRYPTO_SPREAD_BPS = Metric(
    "txp_crypto_spread_bps",
    "Cross-exchange spread of the newest minute traded on two exchanges or more: highest minus lowest "
    "exchange VWAP over their mid, in basis points, by symbol.",
    "gauge",
    (*_P, "symbol"),
)
CRYPTO_WHALE_TRADES_TOTAL = Metric(
    "txp_crypto_whale_trades_total",
    "Whale trades (notional at or above the symbol's whale threshold) in crypto_whale_alerts, by symbol.",
    "counter",
    (*_P, "symbol"),
)
CRYPTO_LAST_WHALE_NOTIONAL = Metric(
    "txp_crypto_last_whale_notional",
    "Notional of the newest whale trade, in the symbol's quote currency, by symbol.",
    "gauge",
    (*_P, "symbol"),
)
CRYPTO_PRICE_ANOMALIES_TOTAL = Metric(
    "txp_crypto_price_anomalies_total",
    "Trades printed far outside the previous minute's range (crypto_price_anomalies: flagged, not rejected), "
    "by symbol and exchange.",
    "counter",
    (*_P, "symbol", "exchange"),
)

#: Every metric of the crypto market, for docs and tests.
MARKET_METRICS: tuple[Metric, ...] = (
    CRYPTO_TRADES_TOTAL,
    CRYPTO_BASE_VOLUME_TOTAL,
    CRYPTO_QUOTE_NOTIONAL_TOTAL,
    CRYPTO_LAST_PRICE,
    CRYPTO_LAST_TRADE_TIMESTAMP,
    CRYPTO_VWAP,
    CRYPTO_VWAP_15M,
    CRYPTO_VOLATILITY_15M,
    CRYPTO_SPREAD_BPS,
    CRYPTO_WHALE_TRADES_TOTAL,
    CRYPTO_LAST_WHALE_NOTIONAL,
    CRYPTO_PRICE_ANOMALIES_TOTAL,
)

#: The derived tables read here (the pipeline's own table is ``spec.table``).
SYMBOL_METRICS, SPREAD, WHALES, ANOMALIES = (
    "crypto_symbol_metrics",
    "crypto_spread_1m",
    "crypto_whale_alerts",
    "crypto_price_anomalies",
)


def _existing(cur: Any, tables: Iterable[str]) -> set[str]:  # noqa: ANN401 - a cursor
    """The ``tables`` that exist on the connection's search path (asked, not tried: a failed statement
    would abort a caller's transaction)."""
    cur.execute("SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL", (list(tables),))
    return {t for (t,) in cur.fetchall()}


def _rows(cur: Any, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:  # noqa: ANN401
    cur.execute(query, params)
    return list(cur.fetchall())


def market_metrics(spec: PipelineSpec, conn: Any) -> Iterator[MetricFamily]:  # noqa: ANN401 - a DB-API connection
    """The market figures of ``spec``'s topic, read on ``conn``: families of :data:`MARKET_METRICS`.

    Families of a table that does not exist are left out; the others are complete.
    """
    name, topic, table = spec.name, spec.topic, spec.table
    sides = spec.contract.field("side").enum_symbols
    with conn.cursor() as cur:
        present = _existing(cur, (table, SYMBOL_METRICS, SPREAD, WHALES, ANOMALIES))
        if table in present:
            yield from _trade_families(cur, name, topic, table, sides)
        if SYMBOL_METRICS in present:
            yield from _symbol_families(cur, name, topic)
        if SPREAD in present:
            yield _spread_family(cur, name, topic)
        if WHALES in present:
            yield from _whale_families(cur, name, topic)
        if ANOMALIES in present:
            yield _anomaly_family(cur, name, topic)


def _trade_families(cur: Any, name: str, topic: str, table: str, sides: tuple[str, ...]) -> Iterator[MetricFamily]:  # noqa: ANN401
    trades, volume, notional = (
        CRYPTO_TRADES_TOTAL.family(), CRYPTO_BASE_VOLUME_TOTAL.family(), CRYPTO_QUOTE_NOTIONAL_TOTAL.family()
    )  # fmt: skip
    counts: dict[tuple[str, str, str], int] = {}
    sums: dict[tuple[str, str], list[float]] = {}
    quotes = {s: i.quote for s, i in SYMBOLS.items()}
    for symbol, exchange, side, quote, n, quantity, value in _rows(
        cur,
        f"SELECT symbol, exchange, side, quote_currency, count(*), sum(quantity), sum(price * quantity) "  # noqa: S608 - the spec's table name
        f"FROM {table} WHERE kafka_topic = %s GROUP BY 1, 2, 3, 4",
        (topic,),
    ):
        counts[symbol, exchange, side] = counts.get((symbol, exchange, side), 0) + int(n)
        total = sums.setdefault((symbol, exchange), [0.0, 0.0])
        total[0] += float(quantity)
        total[1] += float(value)
        quotes.setdefault(symbol, quote)
    # every listed symbol and venue from 0, so that increase() sees the first trade of each
    for symbol in sorted({*SYMBOLS, *(s for s, _, _ in counts)}):
        for exchange in sorted({*EXCHANGES, *(e for s, e, _ in counts if s == symbol)}):
            for side in sides:
                trades.add_metric([name, symbol, exchange, side], counts.get((symbol, exchange, side), 0))
            quantity, value = sums.get((symbol, exchange), (0.0, 0.0))
            volume.add_metric([name, symbol, exchange], quantity)
            notional.add_metric([name, symbol, exchange, quotes[symbol]], value)
    price, when = CRYPTO_LAST_PRICE.family(), CRYPTO_LAST_TRADE_TIMESTAMP.family()
    for symbol, exchange, last, seconds in _rows(
        cur,
        f"SELECT DISTINCT ON (symbol, exchange) symbol, exchange, price, extract(epoch FROM event_time)::float8 "  # noqa: S608
        f"FROM {table} WHERE kafka_topic = %s ORDER BY symbol, exchange, event_time DESC, trade_id DESC",
        (topic,),
    ):
        price.add_metric([name, symbol, exchange], float(last))
        when.add_metric([name, symbol, exchange], float(seconds))
    yield from (trades, volume, notional, price, when)


def _symbol_families(cur: Any, name: str, topic: str) -> Iterator[MetricFamily]:  # noqa: ANN401
    vwap, vwap_15m, volatility = CRYPTO_VWAP.family(), CRYPTO_VWAP_15M.family(), CRYPTO_VOLATILITY_15M.family()
    for symbol, last_vwap, last_vwap_15m in _rows(
        cur,
        f"SELECT DISTINCT ON (symbol) symbol, vwap, vwap_15m FROM {SYMBOL_METRICS} "  # noqa: S608 - a constant
        "WHERE source_topic = %s ORDER BY symbol, minute DESC",
        (topic,),
    ):
        if last_vwap is not None:
            vwap.add_metric([name, symbol], float(last_vwap))
        if last_vwap_15m is not None:
            vwap_15m.add_metric([name, symbol], float(last_vwap_15m))
    # a minute with fewer than two returns in its window has none: the newest one that has one
    for symbol, sigma in _rows(
        cur,
        f"SELECT DISTINCT ON (symbol) symbol, volatility_15m FROM {SYMBOL_METRICS} "  # noqa: S608 - a constant
        "WHERE source_topic = %s AND volatility_15m IS NOT NULL ORDER BY symbol, minute DESC",
        (topic,),
    ):
        volatility.add_metric([name, symbol], float(sigma))
    yield from (vwap, vwap_15m, volatility)


def _spread_family(cur: Any, name: str, topic: str) -> MetricFamily:  # noqa: ANN401
    spread = CRYPTO_SPREAD_BPS.family()
    for symbol, bps in _rows(
        cur,
        f"SELECT DISTINCT ON (symbol) symbol, spread_bps FROM {SPREAD} "  # noqa: S608 - a constant
        "WHERE source_topic = %s ORDER BY symbol, minute DESC",
        (topic,),
    ):
        spread.add_metric([name, symbol], float(bps))
    return spread


def _whale_families(cur: Any, name: str, topic: str) -> Iterator[MetricFamily]:  # noqa: ANN401
    whales, last = CRYPTO_WHALE_TRADES_TOTAL.family(), CRYPTO_LAST_WHALE_NOTIONAL.family()
    counts: dict[str, int] = {}
    newest: dict[str, float] = {}
    for symbol, n, notional in _rows(
        cur,
        f"SELECT symbol, count(*), (array_agg(notional ORDER BY event_time DESC, trade_id DESC))[1] "  # noqa: S608
        f"FROM {WHALES} WHERE source_topic = %s GROUP BY 1",
        (topic,),
    ):
        counts[symbol] = int(n)
        newest[symbol] = float(notional)
    for symbol in sorted({*SYMBOLS, *counts}):
        whales.add_metric([name, symbol], counts.get(symbol, 0))
        if symbol in newest:
            last.add_metric([name, symbol], newest[symbol])
    yield from (whales, last)


def _anomaly_family(cur: Any, name: str, topic: str) -> MetricFamily:  # noqa: ANN401
    anomalies = CRYPTO_PRICE_ANOMALIES_TOTAL.family()
    counts = {
        (symbol, exchange): int(n)
        for symbol, exchange, n in _rows(
            cur,
            f"SELECT symbol, exchange, count(*) FROM {ANOMALIES} WHERE source_topic = %s GROUP BY 1, 2",  # noqa: S608
            (topic,),
        )
    }
    for symbol in sorted({*SYMBOLS, *(s for s, _ in counts)}):
        for exchange in sorted({*EXCHANGES, *(e for s, e in counts if s == symbol)}):
            anomalies.add_metric([name, symbol, exchange], counts.get((symbol, exchange), 0))
    return anomalies
