"""The bad-input corpus through the real Kafka, registry, Spark and Postgres: every record lands once."""

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from spark_jobs.sink import SinkConfig, TransactionSink
from spark_jobs.sink._dlq import H_ERROR_CODE, H_ERROR_MESSAGE, H_SOURCE_OFFSET, H_SOURCE_PARTITION, H_SOURCE_TOPIC
from tx_platform.checks import loss_report
from tx_platform.config import Settings
from tx_platform.contract import AvroRecordSerializer, load_contract, register_contract, registry_client, subject_for
from tx_platform.producer import FAULTS, generate
from tx_platform.warehouse import connect

pytestmark = [pytest.mark.integration, pytest.mark.slow]

V2_FIELD = {"name": "loyalty_tier", "type": ["null", "string"], "default": None}


def v2_schema() -> str:
    schema = json.loads(load_contract().schema_str)
    schema["fields"].append(V2_FIELD)
    return json.dumps(schema)


def _dlq_records(settings: Settings) -> list:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t", "enable.auto.commit": False})
    partitions = consumer.list_topics(settings.dlq_topic, timeout=10).topics[settings.dlq_topic].partitions
    consumer.assign([TopicPartition(settings.dlq_topic, p, 0) for p in partitions])
    records, idle = [], 0
    while idle < 3:
        message = consumer.poll(1.0)
        if message is None:
            idle += 1
        elif message.error() is None:
            records.append(message)
    consumer.close()
    return records


def test_bad_input_corpus_lands_once_with_its_reason(spark, settings: Settings, create_topic) -> None:  # noqa: ANN001
    topic = settings.topic
    create_topic(topic, partitions=1)
    client = registry_client(settings.schema_registry_url)
    v1 = register_contract(client, settings.schema_registry_url, subject=subject_for(topic))
    v2 = register_contract(client, settings.schema_registry_url, schema_str=v2_schema(), subject=subject_for(topic))
    assert (v1.version, v2.version) == (1, 2) and v1.schema_id != v2.schema_id
    encode_v1 = AvroRecordSerializer(client, topic)
    encode_v2 = AvroRecordSerializer(client, topic, v2_schema())

    pool = iter(generate(60, seed=3_141, start=datetime.now(UTC) - timedelta(hours=2), span=timedelta(hours=1)))
    first = next(pool)
    cases: list[tuple[str, bytes | None, bytes | None, str | None]] = [("v1-first", b"A1", encode_v1(first), None)]
    for i in range(4):
        cases.append((f"v1-{i}", b"A1", encode_v1(next(pool)), None))
    for i in range(5):
        cases.append((f"v2-{i}", b"A2", encode_v2({**next(pool), "loyalty_tier": "gold"}), None))
    for fault in FAULTS:
        cases.append((fault.kind, b"F", fault.make(next(pool), encode_v1, random.Random(1)), fault.expected_code))
    cases.append(("non-utf8-key", b"\xff\xfe\x00\x80", encode_v1(next(pool)), None))
    huge = encode_v1({**next(pool), "city": "x" * 900_000})
    assert 900_000 < len(huge) < 1_000_000  # near the broker's default 1 MiB record limit
    cases.append(("near-size-limit", b"H", huge, "FIELD_TOO_LONG"))
    cases.append(("same-id-again", b"A1", encode_v1(first), "DUPLICATE_TRANSACTION_ID"))

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for _label, key, value, _code in cases:
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0

    sink = TransactionSink(spark, SinkConfig.from_settings(settings))
    stats = sink.run_available_now()

    conn = connect(settings.dsn())
    with conn.cursor() as cur:
        cur.execute("SELECT kafka_offset, transaction_id::text FROM transactions WHERE kafka_topic = %s", (topic,))
        stored = dict(cur.fetchall())
        cur.execute(
            "SELECT kafka_offset, error_code, reason, raw_key, raw_value FROM quarantine WHERE kafka_topic = %s",
            (topic,),
        )
        quarantined = {r[0]: r[1:] for r in cur.fetchall()}
    report = loss_report(conn, topic)
    conn.close()

    good = [i for i, case in enumerate(cases) if case[3] is None]
    bad = [i for i, case in enumerate(cases) if case[3] is not None]
    assert (stats.records, stats.inserted, stats.quarantined) == (len(cases), len(good), len(bad))
    assert sorted(stored) == good and sorted(quarantined) == bad
    assert report.unexplained == 0 and report.records_read == len(cases)
    for offset in bad:
        label, key, value, code = cases[offset]
        got_code, reason, raw_key, raw_value = quarantined[offset]
        assert got_code == code, label
        assert reason, label
        assert bytes(raw_key) == key, f"{label}: raw key kept"
        assert (None if raw_value is None else bytes(raw_value)) == value, f"{label}: raw value kept byte for byte"

    dlq = _dlq_records(settings)
    assert len(dlq) == len(bad) == stats.dead_lettered
    by_offset = {int(dict(m.headers())[H_SOURCE_OFFSET]): dict(m.headers()) for m in dlq}
    assert sorted(by_offset) == bad
    for offset in bad:
        headers = by_offset[offset]
        assert headers[H_ERROR_CODE].decode() == cases[offset][3]
        assert headers[H_SOURCE_TOPIC].decode() == topic and headers[H_SOURCE_PARTITION] == b"0"
        assert headers[H_ERROR_MESSAGE]

    again = TransactionSink(spark, SinkConfig.from_settings(settings)).run_available_now()
    assert (again.records, again.inserted, again.dead_lettered) == (0, 0, 0)
    assert len(_dlq_records(settings)) == len(bad)  # the DLQ got nothing twice


def test_incompatible_schema_is_rejected_before_anything_is_sent(settings: Settings, create_topic) -> None:  # noqa: ANN001
    from tx_platform.contract import SchemaIncompatibleError
    from tx_platform.kafka_admin import end_offsets
    from tx_platform.producer import open_producer

    create_topic(settings.topic)
    url = settings.schema_registry_url
    open_producer(settings.kafka_bootstrap, settings.topic, url)  # registers v1
    incompatible = json.loads(load_contract().schema_str)
    incompatible["fields"].append({"name": "risk_score", "type": "int"})  # required, no default: breaks readers of v1
    with pytest.raises(SchemaIncompatibleError, match=rf"subject '{settings.topic}-value'.*version 1") as info:
        open_producer(settings.kafka_bootstrap, settings.topic, url, schema_str=json.dumps(incompatible))
    assert "BACKWARD" in str(info.value)
    assert sum(end_offsets(settings.kafka_bootstrap, settings.topic).values()) == 0
