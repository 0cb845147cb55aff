"""Deterministic synthetic card transactions.

Entity pools (customers with accounts and cards, merchants) are built once with Faker; records
are then sampled from the pools with a plain :class:`random.Random`, which is fast and makes the
same seed produce the same records, UUIDs included.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal

from faker import Faker

from tx_platform.contract import Record
from tx_platform.errors import ConfigError
from tx_platform.pipelines._spec import BlockedRecords
from tx_platform.pipelines.transactions._catalog import (
    ATM_MCC,
    CATEGORIES,
    COUNTRIES,
    COUNTRY_BY_CODE,
    HOURLY_PROFILE,
    TRANSFER_MCC,
    Category,
    Country,
)

#: Channel mix of card activity (ECOM is decided per merchant category, see Category.ecom_share).
_ATM_SHARE = 0.06
_TRANSFER_SHARE = 0.04
_REFUND_SHARE = 0.02
_ABROAD_SHARE = 0.05
_CENT = Decimal("0.01")
#: Context.quantize rounds like Decimal.quantize(..., rounding=ROUND_HALF_UP) at a third of the cost.
_HALF_UP = Context(rounding=ROUND_HALF_UP)
#: Records per block of the background stream (see :class:`~tx_platform.pipelines.BlockedRecords`): small
#: enough that the producer's preparing processes take turns often, large enough that a block's start
#: (a new seeded random source) costs nothing next to its records.
BLOCK_RECORDS = 4_096
#: Default longest delay of a late record (``generate(late_ratio=...)``).
DEFAULT_MAX_LATENESS = timedelta(minutes=30)


@dataclass(frozen=True)
class Place:
    """A real place, from Faker's geographic data."""

    city: str
    country: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Merchant:
    """A merchant with its category and location."""

    merchant_id: str
    name: str
    category: Category
    place: Place


@dataclass(frozen=True)
class Card:
    """A card, the account it debits and the customer who holds it."""

    card_id: str
    account_id: str
    customer_id: str
    customer_name: str
    home: Place


@dataclass(frozen=True)
class Pools:
    """All entities records are sampled from."""

    cards: tuple[Card, ...]
    merchants_by_country: dict[str, tuple[Merchant, ...]]
    merchant_cum_weights: dict[str, tuple[float, ...]]
    atms_by_country: dict[str, tuple[Merchant, ...]]
    transfer_hubs: dict[str, Merchant]


#: uuid.UUID(int=n, version=4) clears these bits (variant and version) and sets these ones.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def _uuid4_text(bits: int) -> str:
    """``str(uuid.UUID(int=bits, version=4))`` without building a UUID object (a third of the time)."""
    h = "%032x" % ((bits & _UUID4_CLEAR) | _UUID4_SET)  # noqa: UP031 - the fastest hex formatting here
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _place(fake: Faker, country: str) -> Place:
    found = fake.local_latlng(country_code=country)
    if found is None:
        msg = f"Faker has no places for country {country}"
        raise ConfigError(msg)
    lat, lon, city, code, _tz = found
    return Place(city=city, country=code, latitude=float(lat), longitude=float(lon))


def build_pools(seed: int, customers: int = 2_000, merchants: int = 600) -> Pools:
    """Build the entity pools for ``seed`` (deterministic)."""
    if customers < 1 or merchants < len(COUNTRIES):
        msg = f"need at least 1 customer and {len(COUNTRIES)} merchants"
        raise ConfigError(msg)
    rng = random.Random(f"pools-{seed}")  # noqa: S311 - reproducible synthetic data, not secrets
    fakers = {c.code: Faker(c.locale) for c in COUNTRIES}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed * 1_000 + i)
    country_weights = [c.weight for c in COUNTRIES]

    cards: list[Card] = []
    for n in range(customers):
        country = rng.choices(COUNTRIES, weights=country_weights)[0]
        fake = fakers[country.code]
        customer_id = f"C{n:07d}"
        home = _place(fake, country.code)
        name = fake.name()
        for a in range(1 + (rng.random() < 0.2)):
            account_id = f"A{n:07d}{a}"
            for _ in range(1 + (rng.random() < 0.3)):
                card_id = f"K{rng.getrandbits(48):015d}"
                cards.append(Card(card_id, account_id, customer_id, name, home))

    by_country: dict[str, list[Merchant]] = {c.code: [] for c in COUNTRIES}
    category_weights = [c.weight for c in CATEGORIES]
    for n in range(merchants):
        # every country gets merchants; the rest follow the customer distribution
        country = COUNTRIES[n] if n < len(COUNTRIES) else rng.choices(COUNTRIES, country_weights)[0]
        fake = fakers[country.code]
        category = rng.choices(CATEGORIES, weights=category_weights)[0]
        merchant = Merchant(f"M{n:06d}", fake.company(), category, _place(fake, country.code))
        by_country[country.code].append(merchant)

    atms = {
        c.code: tuple(
            Merchant(f"T{c.code}{i:03d}", f"{c.code} ATM network {i}", ATM_MCC, _place(fakers[c.code], c.code))
            for i in range(3)
        )
        for c in COUNTRIES
    }
    hubs = {
        c.code: Merchant(f"X{c.code}000", f"{c.code} transfer hub", TRANSFER_MCC, _place(fakers[c.code], c.code))
        for c in COUNTRIES
    }
    merchants_by_country = {k: tuple(v) for k, v in by_country.items()}
    cum_weights = {
        k: tuple(itertools.accumulate(m.category.weight for m in v)) for k, v in merchants_by_country.items()
    }
    return Pools(tuple(cards), merchants_by_country, cum_weights, atms, hubs)


class _DiurnalClock:
    """Maps record ``i`` of ``count`` to a time in ``[start, start + span)``.

    Stratified inverse-CDF sampling over the hourly profile: record ``i`` with a uniform draw ``u`` falls
    at ``(i + u) / count`` of the cumulative minute weights :attr:`cdf` (interpolated inside its minute), so
    times increase with ``i`` (a stream is roughly ordered), follow the daily rhythm, and need no sorting
    or memory of past records. The generator's loop computes it inline.
    """

    def __init__(self, start: datetime, span: timedelta) -> None:
        self.start = start
        minutes = max(1, int(span.total_seconds() // 60))
        weights = [HOURLY_PROFILE[(start + timedelta(minutes=m)).hour] for m in range(minutes)]
        self.cdf = list(itertools.accumulate(weights))
        self.total = self.cdf[-1]


@dataclass(frozen=True)
class _Pricing:
    """How amounts are drawn for one (category, country), computed once instead of per record.

    A log-normal amount in USD around the category's median (ATM withdrawals in multiples of 20),
    converted at the country's rate and rounded half-up to its minor unit, never below it.
    """

    mu: float  # log of the median in USD
    sigma: float
    atm: bool
    usd_rate: float
    minor_unit: Decimal
    cents: bool  # minor unit 0.01: the amount already has two decimals

    @classmethod
    def of(cls, category: Category, country: Country) -> _Pricing:
        return cls(
            math.log(category.median_usd), category.sigma, category is ATM_MCC,
            country.usd_rate, country.minor_unit, country.minor_unit == _CENT,
        )  # fmt: skip

    def amount(self, gauss: Callable[[float, float], float]) -> Decimal:
        """One amount, drawing from ``gauss`` (the generator's ``rng.gauss``) once."""
        usd = math.exp(gauss(self.mu, self.sigma))
        if self.atm:
            usd = max(20.0, round(usd / 20.0) * 20.0)
        local = _HALF_UP.quantize(Decimal(str(usd * self.usd_rate)), self.minor_unit)
        if self.cents:
            return max(local, self.minor_unit)
        return max(local, self.minor_unit).quantize(_CENT)


def generate(
    count: int,
    seed: int,
    start: datetime,
    span: timedelta = timedelta(hours=24),
    pools: Pools | None = None,
    fraud_ratio: float = 0.0,
    late_ratio: float = 0.0,
    max_lateness: timedelta = DEFAULT_MAX_LATENESS,
    coherent_travel: bool | None = None,
) -> Iterator[Record]:
    """Yield ``count`` transaction records spread over ``[start, start + span)``.

    The same arguments always yield the same records. With ``fraud_ratio`` and ``late_ratio`` 0 (and
    ``coherent_travel`` not set) the records come in independent blocks (a
    :class:`~tx_platform.pipelines.BlockedRecords`), which ``txp produce`` generates in several processes.

    ``fraud_ratio``: incidents of the four fraud scenarios injected, ``round(count * fraud_ratio)``
    of them (at least 1), in turn (see :func:`~tx_platform.pipelines.transactions._fraud.plan_incidents`);
    ``count`` stays the total. ``late_ratio``: share of background records emitted late, out of
    order: each held back until the stream's event time is up to ``max_lateness`` past its own
    (uniformly drawn; injected incidents are never delayed, their ground truth is about detection).
    ``coherent_travel`` (default: on when ``fraud_ratio`` > 0): a card is present only in its home
    country; abroad it buys online (ECOM) and withdraws at home ATMs. Background card-present
    transactions then never hop countries, so the impossible-travel rule only sees injected incidents.
    """
    coherent = fraud_ratio > 0 if coherent_travel is None else coherent_travel
    if fraud_ratio == 0 and late_ratio == 0 and not coherent:
        return _background(count, seed, start, span, pools, coherent=False)
    return _with_scenarios(count, seed, start, span, pools, fraud_ratio, late_ratio, max_lateness, coherent)


def _with_scenarios(
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
    pools: Pools | None,
    fraud_ratio: float,
    late_ratio: float,
    max_lateness: timedelta,
    coherent: bool,
) -> Iterator[Record]:
    """Background records with the incidents merged in by event time, then some of them held back (late)."""
    from tx_platform.pipelines.transactions._fraud import plan_incidents

    if not 0 <= late_ratio <= 1:
        msg = f"late_ratio must be in [0, 1], not {late_ratio}"
        raise ConfigError(msg)
    if max_lateness < timedelta(0):
        msg = "max_lateness must be >= 0"
        raise ConfigError(msg)
    if start.tzinfo is None:
        msg = "start must be timezone-aware (UTC)"
        raise ConfigError(msg)
    pools = pools or build_pools(seed)
    incidents = plan_incidents(count, seed, start, span, fraud_ratio, pools)
    injected = sorted((r for i in incidents for r in i.records), key=lambda r: r["event_time"])
    if len(injected) > count:
        msg = f"{len(incidents)} incidents need {len(injected)} records, more than the {count} asked for"
        raise ConfigError(msg)
    background = _background(count - len(injected), seed, start, span, pools, coherent=coherent)
    merged = heapq.merge(background, injected, key=lambda r: r["event_time"])
    if late_ratio == 0:
        yield from merged
        return
    fraud_ids = {r["transaction_id"] for r in injected}
    rng = random.Random(f"late-{seed}")  # noqa: S311 - reproducible synthetic data, not secrets
    held: list[tuple[datetime, int, Record]] = []  # (release at, order, record)
    lateness_ms = max_lateness.total_seconds() * 1000
    for n, record in enumerate(merged):
        at = record["event_time"]
        while held and held[0][0] <= at:
            yield heapq.heappop(held)[2]
        if record["transaction_id"] not in fraud_ids and rng.random() < late_ratio:
            heapq.heappush(held, (at + timedelta(milliseconds=rng.random() * lateness_ms), n, record))
            continue
        yield record
    while held:
        yield heapq.heappop(held)[2]


def _background(
    count: int,
    seed: int,
    start: datetime,
    span: timedelta,
    pools: Pools | None,
    coherent: bool,
) -> BlockedRecords:
    """The background records (see :func:`generate`); ``coherent``: card-present only at home.

    In blocks of :data:`BLOCK_RECORDS`, each drawing from its own random source seeded with the seed and
    the block's number: the producer may generate them in several processes, the records are the same.
    """
    if count < 0:
        msg = "count must be >= 0"
        raise ConfigError(msg)
    if start.tzinfo is None:
        msg = "start must be timezone-aware (UTC)"
        raise ConfigError(msg)
    if span <= timedelta(0):
        msg = "span must be positive"
        raise ConfigError(msg)
    setup = _Background(count, seed, _DiurnalClock(start.astimezone(UTC), span), pools or build_pools(seed), coherent)
    blocks = range(-(-count // BLOCK_RECORDS))
    return BlockedRecords(functools.partial(setup.block, b) for b in blocks)


class _Background:
    """What every block of the background stream shares, computed once (before the producer forks)."""

    def __init__(self, count: int, seed: int, clock: _DiurnalClock, pools: Pools, coherent: bool) -> None:
        self.count, self.seed, self.clock, self.pools, self.coherent = count, seed, clock, pools, coherent
        # Everything about a merchant the record needs, looked up once per record instead of derived
        self.sites = _sites(pools)
        self.cards = [(c.account_id, c.customer_id, c.card_id, c.home.country) for c in pools.cards]

    def block(self, number: int) -> Iterator[Record]:
        """Records ``number * BLOCK_RECORDS`` up to the next block's first (or ``count``)."""
        rng = random.Random(f"records-{self.seed}-{number}")  # noqa: S311 - reproducible synthetic data, not secrets
        pools, sites, cards, coherent, count = self.pools, self.sites, self.cards, self.coherent, self.count
        n_cards = len(cards)
        country_codes = tuple(pools.merchants_by_country)
        atms, hubs = pools.atms_by_country, pools.transfer_hubs
        merchants, cum_weights = pools.merchants_by_country, pools.merchant_cum_weights
        random_, choice, gauss, getrandbits = rng.random, rng.choice, rng.gauss, rng.getrandbits
        bisect_left, exp, quantize = bisect.bisect_left, math.exp, _HALF_UP.quantize
        # the clock (``_DiurnalClock``), inlined: one call less per record
        first, cdf, total = self.clock.start, self.clock.cdf, self.clock.total
        for i in range(number * BLOCK_RECORDS, min(count, (number + 1) * BLOCK_RECORDS)):
            account_id, customer_id, card_id, home = cards[int(random_() * n_cards)]
            where = choice(country_codes) if random_() < _ABROAD_SHARE else home
            roll = random_()
            if roll < _ATM_SHARE:
                merchant = choice(atms[home if coherent else where])
                channel, tx_type = "ATM", "WITHDRAWAL"
            elif roll < _ATM_SHARE + _TRANSFER_SHARE:
                merchant = hubs[home]
                channel, tx_type = "TRANSFER", "TRANSFER"
            else:
                cum = cum_weights[where]
                merchant = merchants[where][bisect_left(cum, random_() * cum[-1])]
                # the draw first, always: a coherent stream differs from the other by the channel alone here
                channel = "ECOM" if random_() < merchant.category.ecom_share or (coherent and where != home) else "POS"
                tx_type = "REFUND" if random_() < _REFUND_SHARE else "PURCHASE"
            site = sites[merchant.merchant_id]
            transaction_id = _uuid4_text(getrandbits(128))
            # the amount (``_Pricing.amount``), inlined
            pricing = site.pricing
            usd = exp(gauss(pricing.mu, pricing.sigma))
            if pricing.atm:
                usd = max(20.0, round(usd / 20.0) * 20.0)
            amount = max(quantize(Decimal(str(usd * pricing.usd_rate)), pricing.minor_unit), pricing.minor_unit)
            if not pricing.cents:
                amount = amount.quantize(_CENT)
            target = (i + random_()) / count * total
            minute = bisect_left(cdf, target)
            below = cdf[minute - 1] if minute else 0.0
            offset_ms = int((minute + (target - below) / (cdf[minute] - below)) * 60_000)
            yield {
                "transaction_id": transaction_id,
                "account_id": account_id,
                "customer_id": customer_id,
                "card_id": card_id,
                "merchant_id": merchant.merchant_id,
                "merchant_category": site.mcc,
                "amount": amount,
                "currency": site.currency,
                "channel": channel,
                "transaction_type": tx_type,
                "country": site.country,
                "city": site.city,
                "latitude": site.latitude,
                "longitude": site.longitude,
                "event_time": first + timedelta(0, 0, 0, offset_ms),
            }


@dataclass(frozen=True)
class _Site:
    """The fields of a record that depend on its merchant alone."""

    mcc: str
    currency: str
    country: str
    city: str
    latitude: float
    longitude: float
    pricing: _Pricing


def _sites(pools: Pools) -> dict[str, _Site]:
    """Per merchant id, its record fields; the currency and amount scale are those of the country it is listed in."""
    listed = [
        *((code, m) for code, ms in pools.merchants_by_country.items() for m in ms),
        *((code, m) for code, ms in pools.atms_by_country.items() for m in ms),
        *pools.transfer_hubs.items(),
    ]
    sites = {}
    for code, m in listed:
        country = COUNTRY_BY_CODE[code]
        place = m.place
        sites[m.merchant_id] = _Site(
            m.category.mcc, country.currency, place.country, place.city, place.latitude, place.longitude,
            _Pricing.of(m.category, country),
        )  # fmt: skip
    return sites
