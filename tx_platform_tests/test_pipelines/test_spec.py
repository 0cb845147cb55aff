"""PipelineSpec: the shipped specs' names, the derived names and the validation a spec gets at declaration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tx_platform.contract import CONTRACT_ERROR_CODES, WAREHOUSE_REJECTED, positive
from tx_platform.errors import ConfigError, ContractError
from tx_platform.pipelines import (
    CRYPTO_TRADES,
    DEFAULT_PIPELINE,
    PIPELINES,
    TRANSACTIONS,
    PipelineSpec,
    asset_name,
    get_pipeline,
    pipeline_of_topic,
    resolve_ref,
)

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)


def test_shipped_pipelines_and_their_names() -> None:
    assert list(PIPELINES) == ["transactions", "crypto_trades"] and DEFAULT_PIPELINE == "transactions"
    names = ("topic", "dlq_topic", "table", "natural_key", "kafka_key", "time_column", "quarantine_asset")
    assert [getattr(TRANSACTIONS, n) for n in names] == [
        "transactions", "transactions.dlq", "transactions", "transaction_id", "account_id", "event_time", "quarantine",
    ]  # fmt: skip
    assert [getattr(CRYPTO_TRADES, n) for n in names] == [
        "crypto.trades", "crypto.trades.dlq", "crypto_trades", "trade_id", "symbol", "event_time",
        "crypto_trades_quarantine",
    ]  # fmt: skip
    assert (TRANSACTIONS.subject, TRANSACTIONS.query_name) == ("transactions-value", "transactions_sink")
    assert (CRYPTO_TRADES.subject, CRYPTO_TRADES.query_name) == ("crypto.trades-value", "crypto_trades_sink")
    assert CRYPTO_TRADES.checkpoint("/state/checkpoints/") == "/state/checkpoints/sink-crypto.trades"
    assert TRANSACTIONS.checkpoint(Path("/c")) == "/c/sink-transactions"
    assert [asset_name(p.topic) for p in PIPELINES.values()] == ["transactions", "crypto_trades"]
    assert asset_name(CRYPTO_TRADES.dlq_topic) == "crypto_trades_dlq"


def test_error_codes_are_contract_first_then_rules_in_order_then_postgres() -> None:
    assert CRYPTO_TRADES.error_codes == (
        *CONTRACT_ERROR_CODES,
        "INVALID_UUID", "UNKNOWN_SYMBOL", "UNKNOWN_EXCHANGE", "UNKNOWN_QUOTE_CURRENCY", "NON_POSITIVE_PRICE",
        "NON_POSITIVE_QUANTITY", "EVENT_TIME_TOO_OLD", "EVENT_TIME_IN_FUTURE",
        "DUPLICATE_TRADE_ID", WAREHOUSE_REJECTED,
    )  # fmt: skip
    # two rules share INVALID_COORDINATES: the code is listed once
    assert TRANSACTIONS.error_codes.count("INVALID_COORDINATES") == 1
    assert len(TRANSACTIONS.error_codes) == len(CONTRACT_ERROR_CODES) + 8 + 2


def test_lookups_by_name_and_by_topic() -> None:
    assert get_pipeline("crypto_trades") is CRYPTO_TRADES
    with pytest.raises(ConfigError, match="no pipeline 'nope'; choose one of transactions, crypto_trades"):
        get_pipeline("nope")
    assert pipeline_of_topic("crypto.trades.dlq") is CRYPTO_TRADES
    assert pipeline_of_topic("transactions") is TRANSACTIONS
    assert pipeline_of_topic("tx_elsewhere") is None


def test_with_topic_keeps_everything_but_the_topics() -> None:
    moved = CRYPTO_TRADES.with_topic("crypto_test")
    assert (moved.topic, moved.dlq_topic, moved.subject) == ("crypto_test", "crypto_test.dlq", "crypto_test-value")
    assert (moved.name, moved.table, moved.rules, moved.query_name) == (
        CRYPTO_TRADES.name, CRYPTO_TRADES.table, CRYPTO_TRADES.rules, CRYPTO_TRADES.query_name,
    )  # fmt: skip
    assert CRYPTO_TRADES.with_topic("a", "a-dead").dlq_topic == "a-dead"
    assert moved.quarantine_asset == "crypto_trades_quarantine"


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=PIPELINES)
def test_each_generator_makes_seeded_records_of_its_contract_that_pass_every_rule(spec: PipelineSpec) -> None:
    start = NOW - timedelta(hours=2)
    records = list(spec.generate(300, 11, start, span=timedelta(hours=1)))
    assert records == list(spec.generate(300, 11, start, span=timedelta(hours=1)))
    assert len(records) == 300 and len({r[spec.natural_key] for r in records}) == 300
    assert all(tuple(r) == spec.contract.field_names for r in records)
    for rule in spec.rules:
        assert all(rule.check(r[rule.field]) for r in records), rule.code
    assert all(start <= r[spec.time_column] < start + timedelta(hours=1) for r in records)


# -- validation at declaration ---------------------------------------------------------------------


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    fields = [
        {"name": "id", "type": "string"},
        {"name": "key", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "size", "type": "long"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ]
    path = tmp_path / "thing.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Thing", "fields": fields}))
    return path


def _spec(contract: Path, **changes: object) -> PipelineSpec:
    values: dict[str, object] = {
        "name": "things", "contract_path": contract, "topic": "things", "table": "things", "natural_key": "id",
        "kafka_key": "key", "time_column": "at",
    }  # fmt: skip
    return PipelineSpec(**(values | changes))  # type: ignore[arg-type]


def test_a_valid_spec_gets_the_default_names(contract: Path) -> None:
    spec = _spec(contract, rules=(positive("size", "NON_POSITIVE_SIZE", "size must be positive", 0),))
    assert (spec.dlq_topic, spec.quarantine_asset, spec.duplicate_code) == ("things.dlq", "things_quarantine",
                                                                             "DUPLICATE_ID")  # fmt: skip
    assert spec.error_codes[-3:] == ("NON_POSITIVE_SIZE", "DUPLICATE_ID", WAREHOUSE_REJECTED)
    with pytest.raises(ConfigError, match="pipeline 'things' declares no generator"):
        spec.generate(1, 1, NOW)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"name": "Things"}, ConfigError, "name 'Things' must be a lower-case identifier"),
        ({"table": "things-table"}, ConfigError, "table 'things-table' must be a lower-case identifier"),
        ({"topic": "things topic"}, ConfigError, "topic 'things topic' is not a legal Kafka topic name"),
        ({"topic": ".."}, ConfigError, "is not a legal Kafka topic name"),
        ({"dlq_topic": "things"}, ConfigError, "the dead-letter topic must differ from the topic"),
        ({"natural_key": "uid"}, ContractError, "natural_key names 'uid', which is not a field of"),
        ({"kafka_key": "note"}, ContractError, "'note' must not be nullable \\(it is a key\\)"),
        ({"time_column": "size"}, ContractError, "time_column 'size' must be a timestamp"),
        (
            {"rules": (positive("weight", "NON_POSITIVE_WEIGHT", "weight must be positive", 0),)},
            ContractError,
            "rule NON_POSITIVE_WEIGHT names 'weight'",
        ),
    ],
)
def test_a_spec_that_cannot_work_is_refused_when_declared(
    contract: Path, changes: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _spec(contract, **changes)


def test_references_resolve_to_callables_or_fail_with_what_to_fix() -> None:
    assert resolve_ref("tx_platform.pipelines:get_pipeline") is get_pipeline
    assert resolve_ref(len) is len
    with pytest.raises(ConfigError, match="not a reference of the form 'package.module:attribute'"):
        resolve_ref("tx_platform.pipelines.get_pipeline")
    with pytest.raises(ConfigError, match="cannot resolve 'tx_platform.nowhere:f'"):
        resolve_ref("tx_platform.nowhere:f")
    with pytest.raises(ConfigError, match="'tx_platform.pipelines:PIPELINES' is not callable"):
        resolve_ref("tx_platform.pipelines:PIPELINES")
