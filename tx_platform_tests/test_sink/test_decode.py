"""The decoder is generic over contracts: one with a single text field, one with no text at all."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest

from spark_jobs.sink import decode
from tx_platform.pipelines import PipelineSpec

pytestmark = pytest.mark.integration

FIELDS = {
    "one_text": [
        {"name": "id", "type": "string"},
        {"name": "size", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
    "no_text": [
        {"name": "id", "type": "long"},
        {"name": "size", "type": "double"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}


def _spec(tmp_path: Path, kind: str) -> PipelineSpec:
    path = tmp_path / f"{kind}.avsc"
    path.write_text(json.dumps({"type": "record", "name": "Thing", "fields": FIELDS[kind]}))
    return PipelineSpec(
        name=kind, contract_path=path, topic=kind, table=kind, natural_key="id", kafka_key="id", time_column="at"
    )


def _wire(spec: PipelineSpec, record: dict[str, Any]) -> bytes:
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(spec.contract.schema_str)), record)
    return b"\x00" + struct.pack(">I", 1) + body.getvalue()


def _codes(spark: Any, spec: PipelineSpec, values: list[bytes | None]) -> list[str | None]:  # noqa: ANN401
    rows = [(b"k", value, spec.topic, 0, offset, datetime.now(UTC)) for offset, value in enumerate(values)]
    frame = spark.createDataFrame(
        rows, "key BINARY, value BINARY, topic STRING, partition INT, offset LONG, timestamp TIMESTAMP"
    )
    decoded = decode(frame, spec, {1: spec.contract.schema_str}).orderBy("offset")
    return [row.error_code for row in decoded.select("offset", "error_code").collect()]


def test_a_contract_with_one_text_field(spark, tmp_path: Path) -> None:  # noqa: ANN001
    from decimal import Decimal

    spec = _spec(tmp_path, "one_text")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    good = _wire(spec, {"id": "a", "size": Decimal("12.50"), "at": at})
    values = [
        good,
        _wire(spec, {"id": "x" * 257, "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": " ", "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": "a\x00", "size": Decimal("1.00"), "at": at}),
        good[:7],
        None,
        # the limit counts characters, not bytes: 256 two-byte characters pass, 257 do not, nor 257 of four bytes
        _wire(spec, {"id": "é" * 256, "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": "é" * 257, "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": "\U0001f4b3" * 64, "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": "\U0001f4b3" * 257, "size": Decimal("1.00"), "at": at}),
        _wire(spec, {"id": "Kö\x00ln", "size": Decimal("1.00"), "at": at}),
        # a header with schema id 2 (only 1 is known), and one whose id bytes are cut short
        good[:1] + struct.pack(">I", 2) + good[5:],
        good[:4],
    ]
    assert _codes(spark, spec, values) == [
        None, "FIELD_TOO_LONG", "MISSING_FIELD", "NUL_CHARACTER", "UNDECODABLE_AVRO", "NULL_VALUE",
        None, "FIELD_TOO_LONG", None, "FIELD_TOO_LONG", "NUL_CHARACTER", "UNKNOWN_SCHEMA_ID", "NOT_WIRE_FORMAT",
    ]  # fmt: skip


def test_a_contract_without_text(spark, tmp_path: Path) -> None:  # noqa: ANN001
    spec = _spec(tmp_path, "no_text")
    good = _wire(spec, {"id": 7, "size": 1.5, "at": datetime(2026, 1, 1, tzinfo=UTC)})
    assert _codes(spark, spec, [good, good[:6], b"\x01" + good[1:]]) == [None, "UNDECODABLE_AVRO", "NOT_WIRE_FORMAT"]


def test_decoding_and_rendering_run_as_one_generated_stage(spark) -> None:  # noqa: ANN001
    """Every projection of the decode and render, the rules included, in one whole-stage generated stage but the
    clock's own: a projection outside one copies each decoded record into a row and out again."""
    import re

    from spark_jobs.sink._decode import Decoder
    from spark_jobs.sink._rules import CLOCK_COLUMN
    from tx_platform.pipelines import TRANSACTIONS

    rows = spark.sparkContext.parallelize([(b"k", b"\x00", TRANSACTIONS.topic, 0, 0, datetime.now(UTC))])
    frame = spark.createDataFrame(
        rows, "key BINARY, value BINARY, topic STRING, partition INT, offset LONG, timestamp TIMESTAMP"
    )
    decoder = Decoder(TRANSACTIONS, {1: TRANSACTIONS.contract.schema_str})
    plan = decoder.render(decoder.decode(frame))._jdf.queryExecution().executedPlan().toString()
    projects = [line for line in plan.splitlines() if re.search(r"\bProject \[", line)]
    outside = [line for line in projects if not re.search(r"\*\(\d+\) Project", line)]
    assert len(projects) > 2, plan
    assert len(outside) == 1 and CLOCK_COLUMN in outside[0], plan


def test_a_filter_on_the_error_code_decodes_each_record_once(spark) -> None:  # noqa: ANN001
    """A consumer keeping the good records (the fraud query, the candles) must not make Spark push its filter
    below the rules: rewritten over the rules' conditions, it decoded the Avro body once per reference."""
    from pyspark.sql import functions as F

    from spark_jobs.sink import decode
    from tx_platform.pipelines import TRANSACTIONS

    rows = spark.sparkContext.parallelize([(b"k", b"\x00", TRANSACTIONS.topic, 0, 0, datetime.now(UTC))])
    frame = spark.createDataFrame(
        rows, "key BINARY, value BINARY, topic STRING, partition INT, offset LONG, timestamp TIMESTAMP"
    )
    good = decode(frame, TRANSACTIONS, {1: TRANSACTIONS.contract.schema_str}).where(F.col("error_code").isNull())
    plan = good.select("r.transaction_id")._jdf.queryExecution().executedPlan().toString()
    assert plan.count("from_avro(") == 1, plan
