from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tx_platform.contract import country_codes, currency_codes
from tx_platform.errors import ConfigError
from tx_platform.pipelines import TRANSACTIONS
from tx_platform.pipelines.transactions._catalog import COUNTRIES
from tx_platform.pipelines.transactions._generator import build_pools, generate

pytestmark = pytest.mark.unit

START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return list(generate(20_000, seed=7, start=START))


def test_same_seed_same_records_uuids_included(records: list[dict]) -> None:
    again = list(generate(20_000, seed=7, start=START))
    assert again == records
    other = list(generate(100, seed=8, start=START))
    assert {r["transaction_id"] for r in other}.isdisjoint(r["transaction_id"] for r in records)


def test_records_have_exactly_the_contract_fields(records: list[dict]) -> None:
    names = TRANSACTIONS.contract.field_names
    assert all(tuple(r) == names for r in records)


def test_the_spec_generates_with_the_generator_it_names() -> None:
    assert list(TRANSACTIONS.generate(300, seed=7, start=START)) == list(generate(300, seed=7, start=START))


def test_ids_are_unique_uuid4(records: list[dict]) -> None:
    ids = [r["transaction_id"] for r in records]
    assert len(set(ids)) == len(ids)
    assert all(i[14] == "4" for i in ids)


def test_amounts_positive_with_two_decimals_and_local_scale(records: list[dict]) -> None:
    assert all(r["amount"] > 0 and r["amount"].as_tuple().exponent == -2 for r in records)
    jpy = [r["amount"] for r in records if r["currency"] == "JPY"]
    assert jpy and all(a == a.to_integral_value() for a in jpy)  # yen has no minor unit
    median = sorted(r["amount"] for r in records if r["currency"] == "USD")[len(records) // 10]
    assert Decimal(5) < median < Decimal(500)


def test_currency_matches_country_and_codes_are_iso(records: list[dict]) -> None:
    by_country = {c.code: c.currency for c in COUNTRIES}
    assert all(by_country[r["country"]] == r["currency"] for r in records)
    assert {r["currency"] for r in records} <= currency_codes()
    assert {r["country"] for r in records} <= country_codes()
    assert all(len(r["merchant_category"]) == 4 and r["merchant_category"].isdigit() for r in records)


def test_channel_and_type_mix(records: list[dict]) -> None:
    channels = Counter(r["channel"] for r in records)
    share = {k: v / len(records) for k, v in channels.items()}
    assert 0.04 < share["ATM"] < 0.08 and 0.025 < share["TRANSFER"] < 0.055
    assert share["POS"] > share["ECOM"] > share["ATM"]
    assert all(r["transaction_type"] == "WITHDRAWAL" for r in records if r["channel"] == "ATM")
    assert all(r["merchant_category"] == "6011" for r in records if r["channel"] == "ATM")
    refunds = sum(r["transaction_type"] == "REFUND" for r in records) / len(records)
    assert 0.01 < refunds < 0.03


def test_times_ordered_inside_span_with_daily_rhythm(records: list[dict]) -> None:
    times = [r["event_time"] for r in records]
    assert times == sorted(times)
    assert START <= times[0] and times[-1] < START + timedelta(hours=24)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in times)
    hours = Counter(t.hour for t in times)
    assert hours[18] > 3 * hours[3]  # evening peak against the night trough


def test_coordinates_are_real_places(records: list[dict]) -> None:
    assert all(-90 <= r["latitude"] <= 90 and -180 <= r["longitude"] <= 180 for r in records)
    assert len({r["city"] for r in records}) > 100


def test_pools_are_deterministic_and_cover_every_country() -> None:
    a, b = build_pools(3, customers=200, merchants=60), build_pools(3, customers=200, merchants=60)
    assert a == b
    assert all(a.merchants_by_country[c.code] for c in COUNTRIES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": -1}, "count"),
        ({"start": datetime(2026, 1, 1)}, "timezone-aware"),  # noqa: DTZ001
        ({"span": timedelta(0)}, "span"),
    ],
)
def test_bad_arguments_get_clear_errors(kwargs: dict, message: str) -> None:
    args = {"count": 1, "seed": 1, "start": START} | kwargs
    with pytest.raises(ConfigError, match=message):
        list(generate(**args))


def test_uuid_text_is_the_standard_libraries_uuid4() -> None:
    import random
    import uuid

    from tx_platform.pipelines.transactions._generator import _uuid4_text

    rng = random.Random(3)
    for bits in [0, 2**128 - 1, *(rng.getrandbits(128) for _ in range(2_000))]:
        assert _uuid4_text(bits) == str(uuid.UUID(int=bits, version=4))


@pytest.mark.parametrize("country", ["US", "JP", "IN"])
def test_precomputed_pricing_draws_the_textbook_amount(country: str) -> None:
    import math
    import random
    from decimal import ROUND_HALF_UP

    from tx_platform.pipelines.transactions._catalog import ATM_MCC, CATEGORIES, COUNTRY_BY_CODE
    from tx_platform.pipelines.transactions._generator import _Pricing

    where = COUNTRY_BY_CODE[country]
    for category in (*CATEGORIES[:3], ATM_MCC):
        ours, reference = random.Random(5), random.Random(5)
        pricing = _Pricing.of(category, where)
        for _ in range(500):
            usd = math.exp(reference.gauss(math.log(category.median_usd), category.sigma))
            if category is ATM_MCC:
                usd = max(20.0, round(usd / 20.0) * 20.0)
            local = Decimal(str(usd * where.usd_rate)).quantize(where.minor_unit, rounding=ROUND_HALF_UP)
            expected = max(local, where.minor_unit).quantize(Decimal("0.01"))
            got = pricing.amount(ours.gauss)
            assert (got, got.as_tuple().exponent) == (expected, -2)


def test_the_stream_is_its_blocks_in_order_and_a_block_depends_on_its_number_alone() -> None:
    from tx_platform.pipelines import BlockedRecords
    from tx_platform.pipelines.transactions._generator import BLOCK_RECORDS

    count = 3 * BLOCK_RECORDS + 100
    stream = generate(count, 9, START)
    assert isinstance(stream, BlockedRecords) and len(stream.blocks) == 4 and not stream.started
    records = list(stream)
    assert len(records) == count and stream.started
    fresh = generate(count, 9, START)
    # block 2 alone, as another process would generate it, then block 3 (the 100 last records)
    assert list(fresh.blocks[2]()) == records[2 * BLOCK_RECORDS : 3 * BLOCK_RECORDS]
    assert list(fresh.blocks[3]()) == records[3 * BLOCK_RECORDS :]
    assert next(generate(count, 9, START)) == records[0]  # an iterator like any other
    # blocks draw apart: no block repeats another's ids
    assert len({r["transaction_id"] for r in records}) == count
