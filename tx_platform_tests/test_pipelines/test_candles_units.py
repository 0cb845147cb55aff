"""Unit tests of the candle query's parts that need no Spark session and no stack."""

from __future__ import annotations

import json
import random
from decimal import Decimal, localcontext
from pathlib import Path

import pytest

from spark_jobs.transforms import CANDLES, CandleQueryError, CandleSpec, NotionalParts
from spark_jobs.transforms.candles import batch_end_offsets
from tx_platform.errors import ConfigError
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS

pytestmark = pytest.mark.unit


def test_notional_parts_of_the_trade_contract() -> None:
    # decimal(24,10) x decimal(30,18): the quantity's low 12 digits go in the second sum
    assert NotionalParts.of(CRYPTO_TRADES, CANDLES) == NotionalParts(24, 10, 30, 18, 12)


def _parts_as_spark_computes_them(parts: NotionalParts, price: Decimal, quantity: Decimal) -> tuple[int, int]:
    units = int(price.scaleb(parts.price_scale))
    quantity_units = int(quantity.scaleb(parts.quantity_scale))
    high, low = divmod(quantity_units, 10**parts.k)
    return units * high, units * low


def test_joined_parts_are_the_exact_sum_of_price_times_quantity() -> None:
    parts = NotionalParts.of(CRYPTO_TRADES, CANDLES)
    rng = random.Random(7)
    # the smallest amounts, a product that needs all 28 decimals, a large one (10^18 in the quote currency)
    trades = [
        (Decimal("0.0000000001"), Decimal("0.000000000000000001")),
        (Decimal("0.1512288001"), Decimal("242.537287940000000001")),
        (Decimal("99999999.9999999999"), Decimal("9999999999.999999999999999999")),
    ]
    trades += [
        (Decimal(rng.randrange(1, 10**16)).scaleb(-10), Decimal(rng.randrange(1, 10**24)).scaleb(-18))
        for _ in range(500)
    ]
    high = low = 0
    for price, quantity in trades:
        h, lo = _parts_as_spark_computes_them(parts, price, quantity)
        assert h < 10**38 and lo < 10**36  # each term fits Spark's DECIMAL(38,0)
        high, low = high + h, low + lo
    with localcontext() as exact:
        exact.prec = 120
        total = sum((p * q for p, q in trades), Decimal(0))
    assert parts.join(Decimal(high), Decimal(low)) == total
    assert parts.join(Decimal(0), Decimal(1)) == Decimal("1E-28")


def test_a_pipeline_without_candle_fields_is_refused() -> None:
    with pytest.raises(ConfigError, match="no field 'symbol'"):
        CANDLES.validate(TRANSACTIONS)
    with pytest.raises(ConfigError, match="'merchant_id' to be a decimal"):
        CandleSpec(symbol="currency", price="merchant_id", quantity="amount").validate(TRANSACTIONS)


def test_names_follow_the_spec() -> None:
    spec = CRYPTO_TRADES.with_topic("crypto_test")
    assert CANDLES.query_name(spec) == "crypto_trades_candles"
    assert CANDLES.checkpoint(spec, "/state/checkpoints/") == "/state/checkpoints/candles-crypto_test"


def test_end_offsets_come_from_the_checkpoints_offset_log(tmp_path: Path) -> None:
    offsets = tmp_path / "offsets"
    offsets.mkdir()
    metadata = {"batchWatermarkMs": 0, "batchTimestampMs": 1795599357842, "conf": {}}
    (offsets / "3").write_text(f'v1\n{json.dumps(metadata)}\n{{"crypto.trades":{{"2":12,"1":0,"0":40}}}}')
    assert batch_end_offsets(None, str(tmp_path), 3) == {"crypto.trades": {"2": 12, "1": 0, "0": 40}}  # type: ignore[arg-type]
    (offsets / "4").write_text(f"v1\n{json.dumps(metadata)}\n-\n-")
    with pytest.raises(CandleQueryError, match="expected the offsets of one Kafka source"):
        batch_end_offsets(None, str(tmp_path), 4)  # type: ignore[arg-type]
