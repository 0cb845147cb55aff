import io
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import fastavro
import pytest

from tx_platform.errors import ConfigError
from tx_platform.pipelines.crypto_trades._market import (
    EXCHANGES,
    QUOTE_CURRENCIES,
    SYMBOLS,
    whale_threshold,
)
from tx_platform.pipelines.crypto_trades._simulator import (
    WHALE_SHARE,
    coverage_count,
    covered_minutes,
    simulate,
)
from tx_platform_tests.test_pipelines._candles_reference import Candle, reference_candles

pytestmark = pytest.mark.unit

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "tx_platform" / "pipelines" / "crypto_trades" / "trade.avsc"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
FIELDS = {f["name"]: f for f in SCHEMA["fields"]}
START = datetime(2026, 3, 1, 12, tzinfo=UTC)
SPAN = timedelta(minutes=30)
COUNT = 60_000
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def trades() -> list[dict]:
    return list(simulate(COUNT, seed=7, start=START, span=SPAN))


def _minute(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


# --- determinism and shape ---------------------------------------------------------------------


def test_same_arguments_same_trades_uuids_included(trades: list[dict]) -> None:
    assert list(simulate(COUNT, seed=7, start=START, span=SPAN)) == trades
    other = list(simulate(COUNT, seed=8, start=START, span=SPAN))
    assert other != trades
    assert {t["trade_id"] for t in other}.isdisjoint(t["trade_id"] for t in trades)


def test_records_have_exactly_the_contract_fields_in_order(trades: list[dict]) -> None:
    names = tuple(FIELDS)
    assert all(tuple(t) == names for t in trades)


def test_ids_unique_and_well_formed(trades: list[dict]) -> None:
    ids = [t["trade_id"] for t in trades]
    assert len(set(ids)) == len(ids)
    assert all(UUID4.match(i) for i in ids)
    orders = [t["taker_order_id"] for t in trades]
    assert all(re.fullmatch(r"o-[0-9a-f]{16}", o) for o in orders)
    assert len(set(orders)) == len(orders)


def test_symbols_exchanges_quotes_and_sides(trades: list[dict]) -> None:
    assert {t["symbol"] for t in trades} == set(SYMBOLS)
    assert {t["exchange"] for t in trades} == set(EXCHANGES)
    assert all(t["quote_currency"] == SYMBOLS[t["symbol"]].quote for t in trades)
    assert {t["quote_currency"] for t in trades} == QUOTE_CURRENCIES
    sides = Counter(t["side"] for t in trades)
    assert set(sides) == {"BUY", "SELL"}
    assert 0.47 < sides["BUY"] / len(trades) < 0.53
    symbols = Counter(t["symbol"] for t in trades)
    total_weight = sum(i.weight for i in SYMBOLS.values())
    for symbol, instrument in SYMBOLS.items():
        assert symbols[symbol] / len(trades) == pytest.approx(instrument.weight / total_weight, abs=0.02)


def test_count_zero_yields_nothing() -> None:
    assert list(simulate(0, seed=1, start=START)) == []


# --- time ----------------------------------------------------------------------------------------


def test_event_times_utc_millis_non_decreasing_and_in_range(trades: list[dict]) -> None:
    times = [t["event_time"] for t in trades]
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)
    assert all(t.microsecond % 1000 == 0 for t in times)
    assert all(a <= b for a, b in pairwise(times))
    assert START <= times[0] and times[-1] < START + SPAN


def test_unaligned_start_with_microseconds_stays_in_range() -> None:
    start = datetime(2026, 3, 1, 12, 0, 30, 250_400, tzinfo=UTC)
    span = timedelta(seconds=90, microseconds=300)
    times = [t["event_time"] for t in simulate(5_000, seed=3, start=start, span=span)]
    assert start <= times[0] and times[-1] < start + span
    assert all(a <= b for a, b in pairwise(times))
    assert all(t.microsecond % 1000 == 0 for t in times)


def test_non_utc_start_gives_utc_times() -> None:
    start = datetime(2026, 3, 1, 13, tzinfo=timezone(timedelta(hours=1)))
    times = [t["event_time"] for t in simulate(100, seed=3, start=start)]
    assert all(t.tzinfo == UTC for t in times)
    assert start <= times[0] and times[-1] < start + timedelta(minutes=30)


def test_arrivals_come_in_bursts(trades: list[dict]) -> None:
    per_10s = Counter(int((t["event_time"] - START).total_seconds() // 10) for t in trades)
    counts = [per_10s[b] for b in range(int(SPAN.total_seconds() // 10))]
    assert max(counts) > 3 * statistics.median(counts)


# --- coverage guarantee --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "span", "minutes"),
    [
        (START, SPAN, 30),
        (datetime(2026, 3, 1, 12, 0, 30, 250_000, tzinfo=UTC), SPAN, 31),
        (datetime(2026, 3, 1, 12, 0, 59, tzinfo=UTC), timedelta(seconds=90, milliseconds=500), 3),
        (datetime(2026, 3, 1, 23, 58, tzinfo=UTC), timedelta(minutes=4), 4),  # across midnight
    ],
)
def test_every_symbol_trades_in_every_covered_minute_at_the_threshold(
    start: datetime, span: timedelta, minutes: int
) -> None:
    covered = covered_minutes(start, span)
    assert len(covered) == minutes
    assert covered[0] == _minute(start) and all(m.tzinfo == UTC for m in covered)
    count = coverage_count(start, span)
    assert count == len(SYMBOLS) * minutes
    trades = list(simulate(count, seed=11, start=start, span=span))
    assert len(trades) == count
    seen = {(t["symbol"], _minute(t["event_time"])) for t in trades}
    assert seen == {(s, m) for s in SYMBOLS for m in covered}


def test_big_sample_covers_every_minute(trades: list[dict]) -> None:
    seen = {(t["symbol"], _minute(t["event_time"])) for t in trades}
    assert seen == {(s, m) for s in SYMBOLS for m in covered_minutes(START, SPAN)}


def test_below_the_threshold_still_yields_count_trades() -> None:
    count = coverage_count(START, SPAN) - 1
    assert len(list(simulate(count, seed=5, start=START, span=SPAN))) == count


# --- prices and sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["price", "quantity"])
def test_decimals_positive_and_fit_the_contract(trades: list[dict], field: str) -> None:
    precision, scale = FIELDS[field]["type"]["precision"], FIELDS[field]["type"]["scale"]
    attr = f"{field}_scale"
    for t in trades:
        value: Decimal = t[field]
        assert isinstance(value, Decimal) and value > 0
        exponent = value.as_tuple().exponent
        assert isinstance(exponent, int)
        assert -exponent == getattr(SYMBOLS[t["symbol"]], attr) <= scale
        assert value < Decimal(10) ** (precision - scale)  # fits once rescaled to the contract's scale


def test_catalogue_fits_the_contract() -> None:
    price_scale, quantity_scale = FIELDS["price"]["type"]["scale"], FIELDS["quantity"]["type"]["scale"]
    for symbol, i in SYMBOLS.items():
        assert symbol == i.symbol == f"{i.base}-{i.quote}"
        assert 0 <= i.price_scale <= price_scale and 0 <= i.quantity_scale <= quantity_scale
        assert i.start_price > 0 and i.annual_volatility > 0 and i.weight > 0 and i.median_notional > 0
        assert whale_threshold(symbol) == i.whale_notional > Decimal(i.median_notional) * 20
    for name, v in EXCHANGES.items():
        assert name == v.name and v.weight > 0 and abs(v.premium_bps) < 10
    with pytest.raises(ConfigError, match="unknown symbol"):
        whale_threshold("XRP-USD")


def test_whale_share_and_typical_notional(trades: list[dict]) -> None:
    whales = [t for t in trades if t["price"] * t["quantity"] >= whale_threshold(t["symbol"])]
    assert 0.5 * WHALE_SHARE < len(whales) / len(trades) < 1.6 * WHALE_SHARE
    assert len({t["symbol"] for t in whales}) >= 4
    for symbol, instrument in SYMBOLS.items():
        notionals = [float(t["price"] * t["quantity"]) for t in trades if t["symbol"] == symbol]
        median = statistics.median(notionals)
        assert instrument.median_notional / 1.5 < median < instrument.median_notional * 1.5


def _minute_levels(trades: list[dict]) -> dict[str, list[float]]:
    """Per symbol, the mean log price of each minute with the venue premiums taken out, in time order."""
    logs: dict[tuple[str, datetime], list[float]] = defaultdict(list)
    for t in trades:
        premium = EXCHANGES[t["exchange"]].premium_bps / 1e4
        logs[t["symbol"], _minute(t["event_time"])].append(math.log(float(t["price"]) / (1 + premium)))
    levels: dict[str, list[float]] = defaultdict(list)
    for (symbol, _), values in sorted(logs.items()):
        levels[symbol].append(statistics.fmean(values))
    return levels


def test_prices_stay_near_start_and_related_pairs_move_together(trades: list[dict]) -> None:
    for t in trades:
        assert abs(t["price"] / SYMBOLS[t["symbol"]].start_price - 1) < Decimal("0.2")
    levels = _minute_levels(trades)

    def returns(symbol: str) -> list[float]:
        return [b - a for a, b in pairwise(levels[symbol])]

    assert statistics.correlation(returns("BTC-USD"), returns("BTC-USDT")) > 0.8
    assert statistics.correlation(returns("ETH-USD"), returns("ETH-EUR")) > 0.8


def test_realised_volatility_matches_the_instrument() -> None:
    levels = _minute_levels(list(simulate(60_000, seed=21, start=START, span=timedelta(hours=4))))
    minute = 1 / (365.25 * 24 * 60)
    for symbol, instrument in SYMBOLS.items():
        diffs = [b - a for a, b in pairwise(levels[symbol])]
        # differences of per-minute averages of a Brownian path have 2/3 of its per-minute variance
        annual = math.sqrt(statistics.pvariance(diffs) * 1.5 / minute)
        assert 0.6 * instrument.annual_volatility < annual < 1.4 * instrument.annual_volatility, symbol


def test_exchanges_differ_by_their_premium_for_the_same_symbol_and_minute(trades: list[dict]) -> None:
    groups: dict[tuple[str, datetime], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for t in trades:
        groups[t["symbol"], _minute(t["event_time"])][t["exchange"]].append(float(t["price"]))
    offsets: dict[str, list[float]] = defaultdict(list)
    for by_venue in groups.values():
        if len(by_venue) < len(EXCHANGES):
            continue
        reference = statistics.fmean(by_venue["KRAKEN"])
        for venue, prices in by_venue.items():
            offsets[venue].append((statistics.fmean(prices) / reference - 1) * 1e4)
    kraken = EXCHANGES["KRAKEN"].premium_bps
    for venue, values in offsets.items():
        expected = EXCHANGES[venue].premium_bps - kraken
        assert statistics.fmean(values) == pytest.approx(expected, abs=1.0), venue
    spread = max(statistics.fmean(v) for v in offsets.values()) - min(statistics.fmean(v) for v in offsets.values())
    assert 2 < spread < 10


# --- contract --------------------------------------------------------------------------------------


def test_every_record_round_trips_through_fastavro(trades: list[dict]) -> None:
    schema = fastavro.parse_schema(SCHEMA)
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, trades)
    buffer.seek(0)
    back: list[dict[str, Any]] = [r for r in fastavro.reader(buffer) if isinstance(r, dict)]
    assert len(back) == len(trades)
    for original, read in zip(trades, back, strict=True):
        assert str(read["trade_id"]) == original["trade_id"]
        assert read["price"] == original["price"] and read["quantity"] == original["quantity"]
        assert read["event_time"] == original["event_time"]
        for name in ("exchange", "symbol", "side", "quote_currency", "taker_order_id"):
            assert read[name] == original[name]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "start", "span", "message"),
    [
        (-1, START, SPAN, "count"),
        (10, datetime(2026, 3, 1, 12), SPAN, "timezone-aware"),  # noqa: DTZ001 - the naive start under test
        (10, START, timedelta(0), "span"),
        (10, START, timedelta(minutes=-5), "span"),
        (10, START + timedelta(microseconds=500), timedelta(microseconds=400), "millisecond"),
    ],
)
def test_bad_arguments_raise_config_error_at_the_call(
    count: int, start: datetime, span: timedelta, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate(count, seed=1, start=start, span=span)


# --- reference candles -----------------------------------------------------------------------------


def _trade(trade_id: str, symbol: str, price: str, quantity: str, at: datetime) -> dict:
    return {
        "trade_id": trade_id,
        "symbol": symbol,
        "price": Decimal(price),
        "quantity": Decimal(quantity),
        "event_time": at,
    }


def test_reference_candles_exact() -> None:
    m0, m1 = START, START + timedelta(minutes=1)
    plus_one = timezone(timedelta(hours=1))
    trades = [
        _trade("c", "BTC-USD", "100.50", "0.5", m0 + timedelta(seconds=10)),
        _trade("b", "BTC-USD", "101.00", "1.25", m0 + timedelta(seconds=59, milliseconds=999)),
        # same event_time as "b": the smaller trade_id "a" comes first, so "b" closes the minute
        _trade("a", "BTC-USD", "99.75", "2", m0 + timedelta(seconds=59, milliseconds=999)),
        _trade("d", "BTC-USD", "102.00", "0.000000000000000001", m0 + timedelta(seconds=30)),
        # 13:01:05+01:00 is 12:01:05 UTC: minute m1
        _trade("e", "BTC-USD", "103.10", "3", datetime(2026, 3, 1, 13, 1, 5, tzinfo=plus_one)),
        _trade("f", "DOGE-USD", "0.1512345", "1000.5", m0 + timedelta(seconds=30)),
        # same time and id order decides open: "g" < "h"
        _trade("h", "DOGE-USD", "0.1600000", "10", m1),
        _trade("g", "DOGE-USD", "0.1500000", "20", m1),
    ]
    assert reference_candles(trades) == {
        ("BTC-USD", m0): Candle(
            open=Decimal("100.50"),
            high=Decimal("102.00"),
            low=Decimal("99.75"),
            close=Decimal("101.00"),
            volume=Decimal("3.750000000000000001"),
            trade_count=4,
            notional=Decimal("50.25") + Decimal("126.25") + Decimal("199.5") + Decimal("0.000000000000000102"),
        ),
        ("BTC-USD", m1): Candle(
            open=Decimal("103.10"),
            high=Decimal("103.10"),
            low=Decimal("103.10"),
            close=Decimal("103.10"),
            volume=Decimal(3),
            trade_count=1,
            notional=Decimal("309.30"),
        ),
        ("DOGE-USD", m0): Candle(
            open=Decimal("0.1512345"),
            high=Decimal("0.1512345"),
            low=Decimal("0.1512345"),
            close=Decimal("0.1512345"),
            volume=Decimal("1000.5"),
            trade_count=1,
            notional=Decimal("151.31011725"),
        ),
        ("DOGE-USD", m1): Candle(
            open=Decimal("0.1500000"),
            high=Decimal("0.1600000"),
            low=Decimal("0.1500000"),
            close=Decimal("0.1600000"),
            volume=Decimal(30),
            trade_count=2,
            notional=Decimal("4.6"),
        ),
    }
    keys = reference_candles(trades)
    assert all(minute.tzinfo is not None and minute.utcoffset() == timedelta(0) for _, minute in keys)


def test_reference_candles_on_simulated_trades_are_consistent(trades: list[dict]) -> None:
    candles = reference_candles(trades)
    assert len(candles) == len(SYMBOLS) * 30
    assert sum(c.trade_count for c in candles.values()) == len(trades)
    for c in candles.values():
        assert c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high
        assert c.low * c.volume <= c.notional <= c.high * c.volume
