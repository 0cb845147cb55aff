"""The bad-input corpus of every pipeline through the real Kafka, registry, Spark and Postgres: every
record lands once, in the pipeline's table or in quarantine with its code, and the DLQ holds the same
rejected records byte for byte."""

from __future__ import annotations

import json
import random
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from spark_jobs.sink import PipelineSink
from spark_jobs.sink._dlq import H_ERROR_CODE, H_ERROR_MESSAGE, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC
from tx_platform.checks import loss_report
from tx_platform.config import Settings
from tx_platform.contract import AvroRecordSerializer, register_contract, registry_client
from tx_platform.pipelines import CRYPTO_TRADES, TRANSACTIONS, PipelineSpec
from tx_platform.producer import faults_for
from tx_platform.warehouse import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: An optional field: version 2 of any contract, BACKWARD compatible with version 1.
V2_FIELD = {"name": "note", "type": ["null", "string"], "default": None}


@pytest.fixture(params=[TRANSACTIONS, CRYPTO_TRADES], ids=["transactions", "crypto_trades"])
def spec(request: pytest.FixtureRequest, unique: str) -> PipelineSpec:
    """Each shipped pipeline, on a topic of this test's own."""
    return request.param.with_topic(f"{request.param.name}_{unique}")


def v2_schema(spec: PipelineSpec) -> str:
    schema = json.loads(spec.contract.schema_str)
    schema["fields"].append(V2_FIELD)
    return json.dumps(schema)


def free_text_field(spec: PipelineSpec) -> str:
    """The last text field no rule, key or enum constrains (transactions: city; crypto_trades: taker_order_id)."""
    ruled = {r.field for r in spec.rules} | {spec.natural_key, spec.kafka_key}
    return [
        f.name for f in spec.contract.fields if f.postgres_type == "text" and not f.enum_symbols and f.name not in ruled
    ][-1]


def _dlq_records(settings: Settings, spec: PipelineSpec) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t", "enable.auto.commit": False})
    partitions = consumer.list_topics(spec.dlq_topic, timeout=10).topics[spec.dlq_topic].partitions
    consumer.assign([TopicPartition(spec.dlq_topic, p, 0) for p in partitions])
    records, idle = [], 0
    while idle < 3:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
        elif message.error() is None:
            records.append(message)
    consumer.close()
    return records


def test_bad_input_corpus_lands_once_with_its_reason(
    spark, settings: Settings, spec: PipelineSpec, create_topic
) -> None:  # noqa: ANN001
    topic = spec.topic
    create_topic(topic, partitions=1)
    client = registry_client(settings.schema_registry_url)
    v1 = register_contract(client, settings.schema_registry_url, spec.contract.schema_str, spec.subject)
    v2 = register_contract(client, settings.schema_registry_url, v2_schema(spec), spec.subject)
    assert (v1.version, v2.version) == (1, 2) and v1.schema_id != v2.schema_id
    encode_v1 = AvroRecordSerializer(client, topic, spec.contract.schema_str)
    encode_v2 = AvroRecordSerializer(client, topic, v2_schema(spec))
    free = free_text_field(spec)
    assert free == {"transactions": "city", "crypto_trades": "taker_order_id"}[spec.name]

    # seeded by the topic: the same ids in a later session on a reused stack would be duplicates
    seed = zlib.crc32(topic.encode())
    pool = iter(spec.generate(60, seed, datetime.now(UTC) - timedelta(hours=2), span=timedelta(hours=1)))
    first = next(pool)
    # (label, key, value, expected code or None, the record when it must be stored)
    cases: list[tuple[str, bytes | None, bytes | None, str | None, dict | None]] = [
        ("v1-first", b"A1", encode_v1(first), None, first)
    ]
    for i in range(4):
        record = next(pool)
        cases.append((f"v1-{i}", b"A1", encode_v1(record), None, record))
    for i in range(5):
        record = next(pool)
        cases.append((f"v2-{i}", b"A2", encode_v2({**record, "note": "gold"}), None, record))
    faults = faults_for(spec)
    for fault in faults:
        cases.append((fault.kind, b"F", fault.make(next(pool), encode_v1, random.Random(1)), fault.expected_code, None))
    record = next(pool)
    cases.append(("non-utf8-key", b"\xff\xfe\x00\x80", encode_v1(record), None, record))
    huge = encode_v1({**next(pool), free: "x" * 900_000})
    assert 900_000 < len(huge) < 1_000_000  # near the broker's default 1 MiB record limit
    cases.append(("near-size-limit", b"H", huge, "FIELD_TOO_LONG", None))
    cases.append(("same-key-again", b"A1", encode_v1(first), spec.duplicate_code, None))
    # every code a record can get before Postgres, and the one Postgres gives, is exercised
    assert {c[3] for c in cases} - {None} == {f.expected_code for f in faults} | {"FIELD_TOO_LONG", spec.duplicate_code}

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for _label, key, value, _code, _record in cases:
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0

    stats = PipelineSink(spark, spec, settings).run_available_now()

    conn = connect(settings.dsn())
    decimals = [f.name for f in spec.contract.fields if f.postgres_type.startswith("numeric")]
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT kafka_offset, {spec.natural_key}::text FROM {spec.table} WHERE kafka_topic = %s",  # noqa: S608
            (topic,),
        )
        stored = dict(cur.fetchall())
        cur.execute(
            f"SELECT {', '.join(f'sum({d})' for d in decimals)} FROM {spec.table} WHERE kafka_topic = %s",  # noqa: S608
            (topic,),
        )
        stored_sums = list(cur.fetchone())
        cur.execute(
            "SELECT kafka_offset, error_code, reason, raw_key, raw_value FROM quarantine WHERE kafka_topic = %s",
            (topic,),
        )
        quarantined = {r[0]: r[1:] for r in cur.fetchall()}
    report = loss_report(conn, spec)
    conn.close()

    good = [i for i, case in enumerate(cases) if case[3] is None]
    bad = [i for i, case in enumerate(cases) if case[3] is not None]
    assert (len(good), len(bad)) == (11, len(faults) + 2)
    assert (stats.records, stats.inserted, stats.quarantined) == (len(cases), len(good), len(bad))
    assert len(cases) == len(stored) + len(quarantined)  # produced = rows + quarantined, exactly
    assert sorted(stored) == good and sorted(quarantined) == bad
    assert {o: stored[o] for o in good} == {o: cases[o][4][spec.natural_key] for o in good}
    assert stored_sums == [sum(cases[o][4][d] for o in good) for d in decimals]
    assert all(isinstance(s, Decimal) for s in stored_sums) and stored_sums
    assert (report.records_read, report.rows, report.quarantined, report.unexplained) == (
        len(cases), len(good), len(bad), 0,
    )  # fmt: skip
    for offset in bad:
        label, key, value, code, _record = cases[offset]
        got_code, reason, raw_key, raw_value = quarantined[offset]
        assert got_code == code, label
        assert reason, label
        assert bytes(raw_key) == key, f"{label}: raw key kept"
        assert (None if raw_value is None else bytes(raw_value)) == value, f"{label}: raw value kept byte for byte"
    # reasons of the spec's rules: the rule's own reason, then the value (rules are data, reasons too)
    for offset in bad:
        rule = next((r for r in spec.rules if r.code == cases[offset][3]), None)
        if rule is not None and cases[offset][0] == f"{rule.field}_{rule.code.lower()}":
            assert quarantined[offset][1].startswith(f"{rule.reason}: "), cases[offset][0]

    dlq = _dlq_records(settings, spec)
    assert len(dlq) == len(bad) == stats.dead_lettered
    by_offset = {int(dict(m.headers())[H_SOURCE_OFFSET]): m for m in dlq}
    assert sorted(by_offset) == bad
    for offset in bad:
        message = by_offset[offset]
        headers = dict(message.headers())
        assert headers[H_ERROR_CODE].decode() == cases[offset][3]
        assert headers[H_SOURCE_TOPIC].decode() == topic and headers[H_SOURCE_PARTITION] == b"0"
        assert headers[H_ERROR_MESSAGE].decode() == quarantined[offset][1]
        assert (message.key(), message.value()) == (cases[offset][1], cases[offset][2])  # the same record

    again = PipelineSink(spark, spec, settings).run_available_now()
    assert (again.records, again.inserted, again.dead_lettered) == (0, 0, 0)
    assert len(_dlq_records(settings, spec)) == len(bad)  # the DLQ got nothing twice


def test_incompatible_schema_is_rejected_before_anything_is_sent(
    settings: Settings,
    spec: PipelineSpec,
    create_topic,  # noqa: ANN001
) -> None:
    from tx_platform.contract import SchemaIncompatibleError
    from tx_platform.kafka_admin import end_offsets
    from tx_platform.producer import open_producer

    create_topic(spec.topic)
    url = settings.schema_registry_url
    _producer, registration = open_producer(spec, settings.kafka_bootstrap, url)  # registers v1
    assert (registration.subject, registration.version) == (f"{spec.topic}-value", 1)
    incompatible = json.loads(spec.contract.schema_str)
    incompatible["fields"].append({"name": "risk_score", "type": "int"})  # required, no default: breaks readers of v1
    with pytest.raises(SchemaIncompatibleError, match=rf"subject '{spec.topic}-value'.*version 1") as info:
        open_producer(spec, settings.kafka_bootstrap, url, schema_str=json.dumps(incompatible))
    assert "BACKWARD" in str(info.value)
    assert sum(end_offsets(settings.kafka_bootstrap, spec.topic).values()) == 0
