"""Deterministic synthetic crypto trades: a seeded market simulator.

Every instrument of :data:`~._market.SYMBOLS` has one global mid price that follows a driftless
geometric Brownian motion (instruments of one base asset and volatility, BTC-USD and BTC-USDT, share
the motion and keep the ratio of their start prices); each trade prints on a venue of
:data:`~._market.EXCHANGES` at that mid plus the venue's persistent premium and about a basis
point of noise. Arrival times cluster in a
few bursts. Everything is drawn from one :class:`random.Random`, so the same arguments always give
the same trades, UUIDs included.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Context, Decimal

from tx_platform.errors import ConfigError
from tx_platform.pipelines.crypto_trades._market import EXCHANGES, SYMBOLS, Instrument

#: Share of trades that are whale trades (notional at or above the instrument's whale_notional).
WHALE_SHARE = 0.005
#: Whale notionals are whale_notional x Pareto(_WHALE_ALPHA), capped at _WHALE_CAP x whale_notional.
_WHALE_ALPHA = 1.6
_WHALE_CAP = 20.0
#: Sigma of the log-normal notional of ordinary trades; they stay below half the whale notional.
_SIZE_SIGMA = 1.2
#: Standard deviation of a print around the venue's price, as a fraction (1 bp).
_PRINT_NOISE = 1e-4
#: How strongly the taker's side follows the mid's move (P(BUY) = 0.5 + _SIDE_BIAS * tanh(z)).
_SIDE_BIAS = 0.2
#: Bursts: one per started 10 minutes of span (at most 24), 20-120 s long, 4-8x the base intensity.
_BURST_EVERY_MS = 600_000
_MAX_BURSTS = 24
_BURST_MS = (20_000.0, 120_000.0)
_BURST_INTENSITY = (4.0, 8.0)

_MINUTE_MS = 60_000
_MS_PER_YEAR = 365.25 * 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
#: Wide enough for any contract decimal; rounds up so a whale quantity never falls short.
_CEILING = Context(prec=60, rounding=ROUND_CEILING)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ms_range(start: datetime, span: timedelta) -> tuple[int, int]:
    """Whole epoch milliseconds ``[first, end)`` that lie in ``[start, start + span)``."""
    start_us = (start - _EPOCH) // _ONE_US
    end_us = start_us + span // _ONE_US
    first, end = -(-start_us // 1000), -(-end_us // 1000)
    if end <= first:
        msg = "span must contain at least one whole millisecond"
        raise ConfigError(msg)
    return first, end


def _validate(count: int, start: datetime, span: timedelta) -> None:
    if count < 0:
        msg = "count must be >= 0"
        raise ConfigError(msg)
    if start.tzinfo is None or start.utcoffset() is None:
        msg = "start must be timezone-aware (UTC)"
        raise ConfigError(msg)
    if span <= timedelta(0):
        msg = "span must be positive"
        raise ConfigError(msg)


def covered_minutes(start: datetime, span: timedelta) -> list[datetime]:
    """The UTC minutes (their starts) that ``[start, start + span)`` overlaps.

    Event times have millisecond resolution, so a minute counts when it holds a whole millisecond
    of the span. With a minute-aligned start and a whole number of minutes, these are exactly the
    span's minutes; an unaligned start overlaps one minute more.
    """
    _validate(0, start, span)
    first, end = _ms_range(start, span)
    minutes = range(first // _MINUTE_MS, (end - 1) // _MINUTE_MS + 1)
    return [_EPOCH + timedelta(minutes=m) for m in minutes]


def coverage_count(start: datetime, span: timedelta) -> int:
    """Smallest ``count`` for which :func:`simulate` puts every symbol in every covered minute."""
    return len(SYMBOLS) * len(covered_minutes(start, span))


def _intensity(rng: random.Random, span_ms: int) -> tuple[list[float], list[float], list[float]]:
    """Piecewise-constant arrival intensity over ``[0, span_ms)``: base 1, higher in burst windows.

    Returns the segment starts, their intensities and the cumulative intensity at each start
    (one more entry: the total).
    """
    bursts = []
    for _ in range(1 + min(span_ms // _BURST_EVERY_MS, _MAX_BURSTS - 1)):
        length = min(rng.uniform(*_BURST_MS), span_ms / 4)
        begin = rng.random() * (span_ms - length)
        bursts.append((begin, begin + length, rng.uniform(*_BURST_INTENSITY)))
    bounds = sorted({0.0, float(span_ms), *(b for b, _, _ in bursts), *(e for _, e, _ in bursts)})
    starts = bounds[:-1]
    rates = []
    for lo, hi in itertools.pairwise(bounds):
        middle = (lo + hi) / 2
        rates.append(1.0 + sum(m - 1.0 for b, e, m in bursts if b <= middle < e))
    areas = (r * (hi - lo) for r, (lo, hi) in zip(rates, itertools.pairwise(bounds), strict=True))
    cum = [0.0, *itertools.accumulate(areas)]
    return starts, rates, cum


def _bursty_offsets(rng: random.Random, n: int, span_ms: int) -> list[int]:
    """``n`` non-decreasing millisecond offsets in ``[0, span_ms)``, denser in bursts.

    Stratified inverse-CDF sampling: offset ``i`` lies in the ``i``-th ``n``-quantile of the
    intensity, so the offsets come out sorted and cluster where the intensity is high.
    """
    starts, rates, cum = _intensity(rng, span_ms)
    total, last_segment = cum[-1], len(starts) - 1
    offsets, segment, previous = [], 0, 0
    for i in range(n):
        target = (i + rng.random()) / n * total
        while segment < last_segment and cum[segment + 1] <= target:
            segment += 1
        at = int(starts[segment] + (target - cum[segment]) / rates[segment])
        previous = max(previous, min(at, span_ms - 1))
        offsets.append(previous)
    return offsets


def _arrivals(rng: random.Random, count: int, first: int, end: int) -> list[tuple[int, int]]:
    """``count`` sorted ``(offset_ms, symbol_index)`` pairs: coverage trades (when count allows) plus bursty ones."""
    span_ms = end - first
    n_symbols = len(SYMBOLS)
    events: list[tuple[int, int]] = []
    minute_starts = range((first // _MINUTE_MS) * _MINUTE_MS, end, _MINUTE_MS)
    if count >= n_symbols * len(minute_starts):
        # coverage: one trade of every symbol in every minute, uniform within the minute
        order = list(range(n_symbols))
        for minute in minute_starts:
            lo, hi = max(minute, first) - first, min(minute + _MINUTE_MS, end) - first
            rng.shuffle(order)
            events.extend((lo + int(rng.random() * (hi - lo)), k) for k in order)
    cum_weights = list(itertools.accumulate(i.weight for i in SYMBOLS.values()))
    total = cum_weights[-1]
    free = _bursty_offsets(rng, count - len(events), span_ms)
    events.extend((t, bisect.bisect_right(cum_weights, rng.random() * total)) for t in free)
    events.sort()
    return events


def _scaled(units: int, scale: int) -> Decimal:
    return Decimal(f"{units}E-{scale}")


def _whale_quantity(rng: random.Random, instrument: Instrument, price: Decimal) -> Decimal:
    factor = min(rng.paretovariate(_WHALE_ALPHA), _WHALE_CAP)
    notional = _CEILING.multiply(instrument.whale_notional, Decimal(repr(factor)))
    exponent = Decimal(1).scaleb(-instrument.quantity_scale)
    return _CEILING.divide(notional, price).quantize(exponent, context=_CEILING)


def simulate(count: int, seed: int, start: datetime, span: timedelta = timedelta(minutes=30)) -> Iterator[dict]:
    """Yield ``count`` trades with non-decreasing event times in ``[start, start + span)``.

    Records are dicts with the fields of ``trade.avsc``: price and quantity are :class:`Decimal`
    at the instrument's scales, event_time a UTC datetime with millisecond resolution.

    - The same ``(count, seed, start, span)`` always yields the same trades, UUIDs included.
    - Per symbol, one global mid follows a driftless GBM with the instrument's annual volatility,
      stepped by the time between trades (symbols of one base asset and volatility share the
      motion, so BTC-USD and BTC-USDT move together); a print is that mid times
      ``1 + premium_bps / 1e4`` of the venue, plus ~1 bp of noise. The taker side leans towards
      the mid's last move.
    - Notionals are log-normal around ``median_notional``; :data:`WHALE_SHARE` of trades are whale
      trades with a Pareto-tailed notional of at least ``whale_notional`` (and only those reach it).
    - Arrivals cluster in a few bursts of several times the base intensity.
    - **Coverage guarantee**: when ``count >= coverage_count(start, span)``, that is
      ``len(SYMBOLS)`` times the number of UTC minutes ``[start, start + span)`` overlaps (see
      :func:`covered_minutes`; one more than the span's minutes when ``start`` is not
      minute-aligned), every symbol has at least one trade in every one of those minutes.

    Raises :class:`ConfigError` for a negative ``count``, a naive ``start`` or a ``span`` that is
    not positive. Validation happens at the call, before the first record is drawn.
    """
    _validate(count, start, span)
    first, end = _ms_range(start, span)
    return _trades(count, seed, first, end)


def _trades(count: int, seed: int, first: int, end: int) -> Iterator[dict]:
    rng = random.Random(f"crypto-trades-{seed}")  # noqa: S311 - reproducible synthetic data, not secrets
    instruments = list(SYMBOLS.values())
    venues = list(EXCHANGES.values())
    venue_cum = list(itertools.accumulate(v.weight for v in venues))
    venue_total = venue_cum[-1]
    premiums = [v.premium_bps / 1e4 for v in venues]
    # one GBM factor per (base, volatility), starting at 1; an instrument's mid is start_price x factor
    motions = {key: n for n, key in enumerate(dict.fromkeys((i.base, i.annual_volatility) for i in instruments))}
    motion_of = [motions[i.base, i.annual_volatility] for i in instruments]
    factors = [1.0] * len(motions)
    variances = [vol**2 / _MS_PER_YEAR for _, vol in motions]  # per millisecond
    last = [0] * len(motions)
    starts = [float(i.start_price) for i in instruments]
    price_units = [10**i.price_scale for i in instruments]
    quantity_units = [10**i.quantity_scale for i in instruments]
    size_mu = [math.log(i.median_notional) for i in instruments]
    size_cap = [float(i.whale_notional) / 2 for i in instruments]
    origin = _EPOCH + timedelta(milliseconds=first)
    gauss, uniform, exp, sqrt, tanh = rng.gauss, rng.random, math.exp, math.sqrt, math.tanh

    for offset, k in _arrivals(rng, count, first, end):
        instrument = instruments[k]
        m = motion_of[k]
        dt = offset - last[m]
        z = 0.0
        if dt:
            variance = variances[m] * dt
            z = gauss(0.0, 1.0)
            factors[m] *= exp(sqrt(variance) * z - variance / 2)
            last[m] = offset
        venue = bisect.bisect_right(venue_cum, uniform() * venue_total)
        mid = starts[k] * factors[m]
        units = max(1, round(mid * (1.0 + premiums[venue] + _PRINT_NOISE * gauss(0.0, 1.0)) * price_units[k]))
        price = _scaled(units, instrument.price_scale)
        if uniform() < WHALE_SHARE:
            quantity = _whale_quantity(rng, instrument, price)
        else:
            notional = min(exp(gauss(size_mu[k], _SIZE_SIGMA)), size_cap[k])
            q_units = max(1, round(notional * price_units[k] / units * quantity_units[k]))
            quantity = _scaled(q_units, instrument.quantity_scale)
        yield {
            "trade_id": _uuid(rng),
            "exchange": venues[venue].name,
            "symbol": instrument.symbol,
            "side": "BUY" if uniform() < 0.5 + _SIDE_BIAS * tanh(z) else "SELL",
            "price": price,
            "quantity": quantity,
            "quote_currency": instrument.quote,
            "taker_order_id": f"o-{rng.getrandbits(64):016x}",
            "event_time": origin + timedelta(milliseconds=offset),
        }
