import inspect
from datetime import UTC, datetime, timedelta

import pytest

from spark_jobs.sink import _decode
from tx_platform.contract import CONTRACT_ERROR_CODES, WAREHOUSE_REJECTED
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, TRANSACTIONS, PipelineSpec
from tx_platform.producer import WIRE_FAULTS, FaultInjector, faults_for

pytestmark = pytest.mark.unit

START = datetime(2026, 1, 1, tzinfo=UTC)


def _encode(record: dict) -> bytes:
    return b"\x00\x00\x00\x00\x01" + str(record["event_time"]).encode()


def _record(spec: PipelineSpec) -> dict:
    return next(spec.generate(1, seed=5, start=START, span=timedelta(hours=1)))


def test_every_contract_code_is_given_by_the_decoder_and_postgres_decides_the_rest() -> None:
    from tx_platform.warehouse import _sink_writer

    source = inspect.getsource(_decode)
    for code in CONTRACT_ERROR_CODES:
        assert f'"{code}"' in source, code
    writer = inspect.getsource(_sink_writer)
    assert "spec.duplicate_code" in writer and "WAREHOUSE_REJECTED" in writer  # decided in Postgres
    assert TRANSACTIONS.duplicate_code == "DUPLICATE_TRANSACTION_ID"
    assert CRYPTO_TRADES.duplicate_code == "DUPLICATE_TRADE_ID"
    assert TRANSACTIONS.error_codes[-2:] == ("DUPLICATE_TRANSACTION_ID", WAREHOUSE_REJECTED)


def test_the_corpus_of_each_pipeline_is_exactly_its_wire_faults_empty_key_and_rules() -> None:
    assert [(f.kind, f.expected_code) for f in faults_for(TRANSACTIONS)] == [
        ("random_bytes", "NOT_WIRE_FORMAT"),
        ("empty_value", "NOT_WIRE_FORMAT"),
        ("wrong_magic_byte", "NOT_WIRE_FORMAT"),
        ("unknown_schema_id", "UNKNOWN_SCHEMA_ID"),
        ("truncated_avro", "UNDECODABLE_AVRO"),
        ("tombstone", "NULL_VALUE"),
        ("missing_transaction_id", "MISSING_FIELD"),
        ("transaction_id_invalid_uuid", "INVALID_UUID"),
        ("amount_non_positive_amount", "NON_POSITIVE_AMOUNT"),
        ("currency_unknown_currency", "UNKNOWN_CURRENCY"),
        ("country_unknown_country", "UNKNOWN_COUNTRY"),
        ("merchant_category_invalid_merchant_category", "INVALID_MERCHANT_CATEGORY"),
        ("latitude_invalid_coordinates", "INVALID_COORDINATES"),
        ("longitude_invalid_coordinates", "INVALID_COORDINATES"),
        ("event_time_event_time_too_old", "EVENT_TIME_TOO_OLD"),
        ("event_time_event_time_in_future", "EVENT_TIME_IN_FUTURE"),
    ]
    assert [f.kind for f in faults_for(CRYPTO_TRADES)][len(WIRE_FAULTS) :] == [
        "missing_trade_id",
        "trade_id_invalid_uuid",
        "symbol_unknown_symbol",
        "exchange_unknown_exchange",
        "quote_currency_unknown_quote_currency",
        "price_non_positive_price",
        "quantity_non_positive_quantity",
        "event_time_event_time_too_old",
        "event_time_event_time_in_future",
    ]
    for spec in PIPELINES.values():
        assert {f.expected_code for f in faults_for(spec)} <= set(spec.error_codes)
        assert {r.code for r in spec.rules} <= {f.expected_code for f in faults_for(spec)}


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=PIPELINES)
def test_injector_is_seeded_cycles_every_kind_keys_by_the_spec_and_counts(spec: PipelineSpec) -> None:
    record = _record(spec)
    a, b = FaultInjector(0.5, 1, _encode, spec), FaultInjector(0.5, 1, _encode, spec)
    outs_a = [a.outgoing(record) for _ in range(400)]
    outs_b = [b.outgoing(record) for _ in range(400)]
    assert [(o.value, o.injected) for o in outs_a] == [(o.value, o.injected) for o in outs_b]
    assert 150 < a.injected_total < 250
    assert set(a.injected) == {f.kind for f in faults_for(spec)}
    assert all(o.key == str(record[spec.kafka_key]).encode() for o in outs_a)


def test_zero_ratio_changes_nothing_and_bad_ratio_is_checked() -> None:
    record = _record(TRANSACTIONS)
    injector = FaultInjector(0.0, 1, _encode, TRANSACTIONS)
    out = injector.outgoing(record)
    assert (out.injected, out.value, injector.injected_total) == (None, _encode(record), 0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultInjector(1.5, 1, _encode, TRANSACTIONS)
