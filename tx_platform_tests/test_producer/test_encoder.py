import io
import json
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest

from tx_platform.contract import split_wire_format
from tx_platform.errors import ContractError
from tx_platform.pipelines import CRYPTO_TRADES, PIPELINES, PipelineSpec
from tx_platform.producer import FaultInjector, WireEncoder

pytestmark = pytest.mark.unit

START = datetime(2026, 1, 1, tzinfo=UTC)

#: Every field kind the compiled writer handles, plus a nullable union.
KINDS = json.dumps(
    {
        "type": "record",
        "name": "Kinds",
        "fields": [
            {"name": "s", "type": "string"},
            {"name": "u", "type": {"type": "string", "logicalType": "uuid"}},
            {"name": "n", "type": "long"},
            {"name": "i", "type": "int"},
            {"name": "d", "type": "double"},
            {"name": "f", "type": "float"},
            {"name": "b", "type": "boolean"},
            {"name": "raw", "type": "bytes"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}},
            {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 30, "scale": 18}},
            {"name": "ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
            {"name": "opt", "type": ["null", "string"], "default": None},
        ],
    }
)


def _kinds(**changes: object) -> dict:
    record = {
        "s": "Zürich",
        "u": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "n": -(2**40),
        "i": 7,
        "d": -12.5,
        "f": 0.25,
        "b": True,
        "raw": b"\x00\xff",
        "e": "C",
        "dec": Decimal("-123456789012.000000000000000001"),
        "ms": datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC),
        "us": datetime(2026, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC),
        "opt": None,
    }
    return record | changes


def test_hand_encoded_record_header_and_fields() -> None:
    schema = json.dumps(
        {
            "type": "record",
            "name": "R",
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "n", "type": "long"},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2}},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            ],
        }
    )
    encoder = WireEncoder(schema, 258)
    assert encoder.compiled
    at = datetime(1970, 1, 1, 0, 0, 0, 64_000, tzinfo=UTC)  # 64 ms: zigzag 128 = varint 0x80 0x01
    data = encoder({"id": "ab", "n": -1, "amount": Decimal("1.28"), "at": at})
    # magic 0, id 258 big-endian; "ab": length 2 zigzag 4; -1: zigzag 1; 128 cents: two's complement 0x00 0x80
    assert data == b"\x00\x00\x00\x01\x02" + b"\x04ab" + b"\x01" + b"\x04\x00\x80" + b"\x80\x01"


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"opt": "x" * 200, "s": "東京", "raw": b"z" * 70},  # lengths past one varint byte, multi-byte UTF-8
        {"dec": Decimal("0.000000000000000000"), "n": 2**63 - 1, "i": -(2**31)},
        {"dec": Decimal("-0.000000000000000128"), "d": float("inf"), "b": False, "e": "A"},
        {"dec": Decimal("999999999999.999999999999999999"), "ms": datetime(2262, 1, 1, tzinfo=UTC)},
    ],
)
def test_compiled_writer_equals_fastavro_on_every_kind(changes: dict) -> None:
    encoder = WireEncoder(KINDS, 42)
    assert encoder.compiled
    record = _kinds(**changes)
    data = encoder(record)
    assert data == encoder.generic(record)
    schema_id, body = split_wire_format(data)
    assert schema_id == 42
    back = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(json.loads(KINDS)), None)
    assert back["dec"] == record["dec"] and back["s"] == record["s"] and back["opt"] == record["opt"]


@pytest.mark.parametrize(
    "changes",
    [
        {"n": True},  # a bool for a long: fastavro's call
        {"ms": 1_700_000_000_000},  # an int for a timestamp: already milliseconds
        {"ms": datetime(2026, 1, 1, 12, 0)},  # noqa: DTZ001 - naive: fastavro decides what it means
        {"dec": Decimal("1.5")},  # fewer decimals than the scale: rescaled
        {"d": 3},  # an int for a double
    ],
)
def test_values_the_compiled_writer_leaves_to_fastavro_encode_as_fastavro_does(changes: dict) -> None:
    encoder = WireEncoder(KINDS, 1)
    record = _kinds(**changes)
    expected = io.BytesIO()
    expected.write(struct.pack(">bI", 0, 1))
    fastavro.schemaless_writer(expected, fastavro.parse_schema(json.loads(KINDS)), record)
    assert encoder(record) == expected.getvalue()


@pytest.mark.parametrize(
    "changes",
    [
        {"e": "D"},  # not a symbol
        {"dec": Decimal("1.0000000000000000001")},  # more decimals than the scale
        {"dec": Decimal("1234567890123.000000000000000000")},  # 31 digits > precision 30
        {"s": 5},
        {"n": 2**63},
    ],
)
def test_values_nobody_can_encode_raise_a_contract_error(changes: dict) -> None:
    with pytest.raises(ContractError, match="does not match the schema"):
        WireEncoder(KINDS, 1)(_kinds(**changes))


def test_nested_schemas_use_fastavro_for_every_record() -> None:
    schema = json.dumps(
        {"type": "record", "name": "N", "fields": [{"name": "xs", "type": {"type": "array", "items": "long"}}]}
    )
    encoder = WireEncoder(schema, 3)
    assert not encoder.compiled
    assert encoder({"xs": [1, -1]}) == b"\x00\x00\x00\x00\x03" + b"\x04\x02\x01\x00"


def test_an_invalid_schema_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match="not a valid Avro schema"):
        WireEncoder('{"type": "record", "name": "R", "fields": [{"name": "x", "type": "nope"}]}', 1)


@pytest.mark.parametrize("spec", PIPELINES.values(), ids=PIPELINES)
def test_every_pipeline_record_and_bad_variant_encodes_as_fastavro_does(spec: PipelineSpec) -> None:
    encoder = WireEncoder(spec.contract.schema_str, 9)
    assert encoder.compiled
    records = list(spec.generate(3_000, seed=11, start=START, span=timedelta(hours=6)))
    assert [encoder(r) for r in records] == [encoder.generic(r) for r in records]
    # the bad-input corpus encodes the rules' bad examples with the same encoder
    injector = FaultInjector(1.0, 11, encoder, spec)
    outs = [injector.outgoing(r) for r in records[: 4 * len(injector.faults)]]
    assert set(injector.injected) == {f.kind for f in injector.faults}
    assert all(o.injected for o in outs)


def test_crypto_decimals_keep_their_eighteen_places() -> None:
    encoder = WireEncoder(CRYPTO_TRADES.contract.schema_str, 5)
    record = next(CRYPTO_TRADES.generate(1, seed=2, start=START, span=timedelta(hours=1)))
    record["quantity"] = Decimal("123456789012.123456789012345678")  # 30 digits: beyond the default context
    _, body = split_wire_format(encoder(record))
    schema = fastavro.parse_schema(json.loads(CRYPTO_TRADES.contract.schema_str))
    assert fastavro.schemaless_reader(io.BytesIO(body), schema, None)["quantity"] == record["quantity"]
