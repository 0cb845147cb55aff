"""The bad-input corpus of every pipeline, checked without a stack: each fault is the good record with
exactly one thing wrong, and that thing is the first the sink checks (so the expected code is the one
it must give). The same corpus goes through the real sink in ``test_sink/test_sink_routes_records.py``.
"""

from __future__ import annotations

import io
import json
import random
import re
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest

from spark_jobs.sink._decode import MAX_TEXT_LENGTH
from tx_platform.contract import CONTRACT_ERROR_CODES, split_wire_format
from tx_platform.pipelines import PIPELINES, PipelineSpec
from tx_platform.producer import WIRE_FAULTS, Fault, faults_for

pytestmark = pytest.mark.unit

SCHEMA_ID = 7


def _schema(spec: PipelineSpec) -> Any:  # noqa: ANN401 - a parsed fastavro schema
    return fastavro.parse_schema(json.loads(spec.contract.schema_str))


def encoder(spec: PipelineSpec) -> Any:  # noqa: ANN401 - Record -> bytes
    """Confluent wire format with schema id 7, as the registry's serializer writes it."""
    schema = _schema(spec)

    def encode(record: dict[str, Any]) -> bytes:
        body = io.BytesIO()
        fastavro.schemaless_writer(body, schema, record)
        return b"\x00" + struct.pack(">I", SCHEMA_ID) + body.getvalue()

    return encode


def _text_uuids(avro_type: Any) -> Any:  # noqa: ANN401 - an Avro type node
    if isinstance(avro_type, dict) and avro_type.get("logicalType") == "uuid":
        return "string"
    return avro_type


def decoded(spec: PipelineSpec, value: bytes) -> dict[str, Any]:
    """The record in ``value`` as the sink's reader sees it (uuid fields as text, as Spark reads them)."""
    schema_id, body = split_wire_format(value)
    assert schema_id == SCHEMA_ID
    # a uuid is a string on the wire: read it without the logical type, so that "" stays ""
    plain = dict(spec.contract.schema)
    plain["fields"] = [{**f, "type": _text_uuids(f["type"])} for f in plain["fields"]]
    return fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(plain))


def contract_code(spec: PipelineSpec, record: dict[str, Any]) -> str | None:
    """The first code that follows from the contract's types alone, in the sink's order (None: none)."""
    fields = spec.contract.fields
    texts = [f for f in fields if f.spark_type == "STRING"]
    if any("\x00" in record[f.name] for f in texts):
        return "NUL_CHARACTER"
    if any(not f.nullable and not record[f.name].strip() for f in texts):
        return "MISSING_FIELD"
    if any(f.enum_symbols and record[f.name] not in f.enum_symbols for f in fields):
        return "INVALID_ENUM"
    if any(len(record[f.name]) > MAX_TEXT_LENGTH for f in texts):
        return "FIELD_TOO_LONG"
    for f in fields:
        bounds = re.fullmatch(r"DECIMAL\((\d+),(\d+)\)", f.spark_type)
        if bounds and abs(record[f.name]) >= 10 ** (int(bounds[1]) - int(bounds[2])):
            return "DECIMAL_OUT_OF_RANGE"
    return None


def reference_code(spec: PipelineSpec, record: dict[str, Any]) -> str | None:
    """The code the sink gives a well-formed record: contract first, then the spec's rules in order."""
    return contract_code(spec, record) or next((r.code for r in spec.rules if not r.check(record[r.field])), None)


@pytest.fixture(params=PIPELINES.values(), ids=PIPELINES)
def spec(request: pytest.FixtureRequest) -> PipelineSpec:
    return request.param


@pytest.fixture
def good(spec: PipelineSpec) -> dict[str, Any]:
    return next(spec.generate(1, 99, datetime.now(UTC) - timedelta(hours=1), span=timedelta(minutes=30)))


def _made(fault: Fault, spec: PipelineSpec, good: dict[str, Any]) -> bytes | None:
    return fault.make(dict(good), encoder(spec), random.Random(3))


def test_the_good_record_passes_everything(spec: PipelineSpec, good: dict[str, Any]) -> None:
    assert reference_code(spec, decoded(spec, encoder(spec)(good))) is None


def test_wire_faults_break_the_bytes_the_same_way_for_every_pipeline(spec: PipelineSpec, good: dict) -> None:
    encoded = encoder(spec)(good)
    made = {f.kind: _made(f, spec, good) for f in WIRE_FAULTS}
    assert made["tombstone"] is None and made["empty_value"] == b""
    assert made["random_bytes"][0] == 0xFF and 5 <= len(made["random_bytes"]) <= 65
    assert made["wrong_magic_byte"] == b"\x01" + encoded[1:]
    assert made["unknown_schema_id"] == b"\x00" + struct.pack(">I", 2_000_000_000) + encoded[5:]
    truncated = made["truncated_avro"]
    assert truncated == encoded[: len(truncated)] and 5 < len(truncated) < len(encoded)
    with pytest.raises((EOFError, ValueError, UnicodeDecodeError, IndexError, struct.error)):
        fastavro.schemaless_reader(io.BytesIO(truncated[5:]), _schema(spec))
    assert {f.expected_code for f in WIRE_FAULTS} <= set(CONTRACT_ERROR_CODES)


def test_each_record_fault_changes_one_field_and_gets_its_code_first(spec: PipelineSpec, good: dict) -> None:
    """The empty natural key and one record per rule: the field holds the bad value, the rest is the
    good record, and nothing the sink checks earlier fails (so the sink must give ``expected_code``)."""
    faults = faults_for(spec)[len(WIRE_FAULTS) :]
    assert len(faults) == 1 + len(spec.rules)
    expected_good = decoded(spec, encoder(spec)(good))
    for fault, rule in zip(faults, (None, *spec.rules), strict=True):
        record = decoded(spec, _made(fault, spec, good))
        field = spec.natural_key if rule is None else rule.field
        value = "" if rule is None else rule.bad_example
        if isinstance(value, datetime):
            value = value.astimezone(UTC)
        assert record[field] == value, fault.kind
        assert {k: v for k, v in record.items() if k != field} == {
            k: v for k, v in expected_good.items() if k != field
        }, fault.kind
        assert reference_code(spec, record) == fault.expected_code, fault.kind
        if rule is not None:
            assert fault.expected_code == rule.code and not rule.check(record[field])
