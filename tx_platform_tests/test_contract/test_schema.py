import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tx_platform.contract import SUBJECT, load_contract, parse_contract
from tx_platform.errors import ContractError

pytestmark = pytest.mark.unit

CONTRACT_FIELDS = (
    "transaction_id", "account_id", "customer_id", "card_id", "merchant_id", "merchant_category", "amount",
    "currency", "channel", "transaction_type", "country", "city", "latitude", "longitude", "event_time",
)  # fmt: skip


def test_contract_fields_are_exactly_the_designed_ones() -> None:
    contract = load_contract()
    assert contract.field_names == CONTRACT_FIELDS
    assert SUBJECT == "transactions-value"
    assert contract.field("channel").enum_symbols == ("POS", "ECOM", "ATM", "TRANSFER")
    assert contract.field("transaction_type").enum_symbols == ("PURCHASE", "REFUND", "WITHDRAWAL", "TRANSFER")


def test_spark_ddl_is_derived_from_the_avsc() -> None:
    ddl = load_contract().spark_ddl()
    assert ddl.startswith("`transaction_id` STRING, `account_id` STRING")
    assert "`amount` DECIMAL(18,2)" in ddl
    assert "`latitude` DOUBLE" in ddl
    assert ddl.endswith("`event_time` TIMESTAMP")


def test_postgres_types_follow_the_logical_types() -> None:
    contract = load_contract()
    assert contract.field("transaction_id").postgres_type == "uuid"
    assert contract.field("amount").postgres_type == "numeric(18,2)"
    assert contract.field("event_time").postgres_type == "timestamptz"


def test_schema_sql_declares_every_contract_field_with_its_type() -> None:
    from importlib import resources

    sql = resources.files("tx_platform.warehouse").joinpath("schema.sql").read_text()
    table = sql[sql.index("CREATE TABLE IF NOT EXISTS transactions") :].split(");", 1)[0]
    for field in load_contract().fields:
        assert re.search(rf"^\s+{field.name}\s+{re.escape(field.postgres_type)}\s", table, re.M), field.name


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
    schema = fastavro.parse_schema(_json.loads(load_contract().schema_str))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    schema_id, avro = split_wire_format(b"\x00\x00\x00\x00\x07" + body.getvalue())
    assert schema_id == 7
    decoded = fastavro.schemaless_reader(io.BytesIO(avro), schema)
    assert decoded == {**record, "transaction_id": uuid.UUID(record["transaction_id"])}
    for bad in (b"", b"\x00\x00", b"\x01\x00\x00\x00\x07abc"):
        with pytest.raises(ContractError, match="wire format"):
            split_wire_format(bad)
