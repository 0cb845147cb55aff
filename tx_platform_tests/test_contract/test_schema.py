import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tx_platform.contract import load_contract, parse_contract
from tx_platform.errors import ContractError
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS

pytestmark = pytest.mark.unit

CONTRACT_FIELDS = (
    "transaction_id", "account_id", "customer_id", "card_id", "merchant_id", "merchant_category", "amount",
    "currency", "channel", "transaction_type", "country", "city", "latitude", "longitude", "event_time",
)  # fmt: skip


TRADE_FIELDS = (
    "trade_id", "exchange", "symbol", "side", "price", "quantity", "quote_currency", "taker_order_id", "event_time",
)  # fmt: skip


def test_contract_fields_are_exactly_the_designed_ones() -> None:
    contract = load_contract(TRANSACTIONS.contract_path)
    assert contract.field_names == CONTRACT_FIELDS
    assert TRANSACTIONS.subject == "transactions-value"
    assert contract.field("channel").enum_symbols == ("POS", "ECOM", "ATM", "TRANSFER")
    assert contract.field("transaction_type").enum_symbols == ("PURCHASE", "REFUND", "WITHDRAWAL", "TRANSFER")


def test_trade_contract_fields_and_types() -> None:
    contract = load_contract(CRYPTO_TRADES.contract_path)
    assert contract.field_names == TRADE_FIELDS
    assert CRYPTO_TRADES.subject == "crypto.trades-value"
    assert contract.field("side").enum_symbols == ("BUY", "SELL")
    assert contract.field("trade_id").postgres_type == "uuid"
    assert contract.field("price").postgres_type == "numeric(24,10)"
    assert contract.field("quantity").postgres_type == "numeric(30,18)"
    assert contract.spark_ddl().split(", ")[4:6] == ["`price` DECIMAL(24,10)", "`quantity` DECIMAL(30,18)"]
    assert not any(f.nullable for f in contract.fields)


def test_contracts_are_loaded_once_per_file_and_a_missing_file_is_a_contract_error(tmp_path) -> None:  # noqa: ANN001
    assert load_contract(TRANSACTIONS.contract_path) is TRANSACTIONS.contract
    with pytest.raises(ContractError, match="cannot read the contract"):
        load_contract(tmp_path / "missing.avsc")
    (tmp_path / "broken.avsc").write_text("{not json")
    with pytest.raises(ContractError, match="is not valid JSON"):
        load_contract(tmp_path / "broken.avsc")


def test_spark_ddl_is_derived_from_the_avsc() -> None:
    ddl = load_contract(TRANSACTIONS.contract_path).spark_ddl()
    assert ddl.startswith("`transaction_id` STRING, `account_id` STRING")
    assert "`amount` DECIMAL(18,2)" in ddl
    assert "`latitude` DOUBLE" in ddl
    assert ddl.endswith("`event_time` TIMESTAMP")


def test_postgres_types_follow_the_logical_types() -> None:
    contract = load_contract(TRANSACTIONS.contract_path)
    assert contract.field("transaction_id").postgres_type == "uuid"
    assert contract.field("amount").postgres_type == "numeric(18,2)"
    assert contract.field("event_time").postgres_type == "timestamptz"


def test_generated_table_declares_every_contract_field_with_its_type() -> None:
    from tx_platform.warehouse import table_ddl

    for spec in (TRANSACTIONS, CRYPTO_TRADES):
        ddl = table_ddl(spec)
        assert ddl.startswith(f"CREATE TABLE IF NOT EXISTS {spec.table} (\n")
        for field in spec.contract.fields:
            key = " PRIMARY KEY" if field.name == spec.natural_key else ""
            line = f"    {field.name} {field.postgres_type} NOT NULL{key},"
            assert line in ddl.splitlines(), (spec.name, field.name)


def test_optional_union_is_nullable_and_other_unions_are_rejected() -> None:
    contract = parse_contract(
        {"type": "record", "name": "R", "fields": [{"name": "note", "type": ["null", "string"], "default": None}]}
    )
    assert contract.fields[0].nullable and contract.fields[0].spark_type == "STRING"
    with pytest.raises(ContractError, match="unions"):
        parse_contract({"type": "record", "name": "R", "fields": [{"name": "x", "type": ["int", "string"]}]})
    with pytest.raises(ContractError, match="record"):
        parse_contract({"type": "string"})


def test_avro_wire_format_round_trip_is_exact() -> None:
    import io
    import json as _json

    import fastavro

    from tx_platform.contract import split_wire_format

    record = {
        "transaction_id": "0d8b6b43-8a2d-4a3e-9d1c-1b2e3f405162", "account_id": "A1", "customer_id": "C1",
        "card_id": "K1", "merchant_id": "M1", "merchant_category": "5411", "amount": Decimal("1234567.89"),
        "currency": "EUR", "channel": "POS", "transaction_type": "PURCHASE", "country": "DE", "city": "Köln",
        "latitude": 50.9375, "longitude": 6.9603, "event_time": datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
    }  # fmt: skip
    schema = fastavro.parse_schema(_json.loads(load_contract(TRANSACTIONS.contract_path).schema_str))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    schema_id, avro = split_wire_format(b"\x00\x00\x00\x00\x07" + body.getvalue())
    assert schema_id == 7
    decoded = fastavro.schemaless_reader(io.BytesIO(avro), schema)
    assert decoded == {**record, "transaction_id": uuid.UUID(record["transaction_id"])}
    for bad in (b"", b"\x00\x00", b"\x01\x00\x00\x00\x07abc"):
        with pytest.raises(ContractError, match="wire format"):
            split_wire_format(bad)
