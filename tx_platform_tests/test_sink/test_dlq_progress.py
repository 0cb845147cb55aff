"""Dead-letter publication keeps its progress in Postgres: exactly once through retention of the DLQ's
tail, a delivery that failed while later ones arrived, and a crash between delivery and confirmation.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from spark_jobs.sink._dlq import DLQ_MAX_MESSAGE_BYTES, H_SOURCE_OFFSET, DeadLetterPublisher
from tx_platform.config import Settings
from tx_platform.errors import SinkError
from tx_platform.pipelines import PipelineSpec
from tx_platform.warehouse import PartitionRange, commit_batch, connect, ensure_schema

pytestmark = pytest.mark.integration


def _reject(topic: str, offset: int, value: bytes) -> str:
    buffer = io.StringIO()
    row = [topic, 0, offset, "2026-01-02T03:04:05Z", "\\x4b", "\\x" + value.hex(), "NOT_WIRE_FORMAT", "test reject"]
    csv.writer(buffer, lineterminator="\n").writerow(row)
    return buffer.getvalue().removesuffix("\n")


def _quarantine(
    settings: Settings, spec: PipelineSpec, values: list[bytes], first_offset: int = 0, batch_id: int = 0
) -> None:
    """Commit ``values`` as rejected records of partition 0, from ``first_offset`` on."""
    lines = [_reject(spec.topic, first_offset + i, v) for i, v in enumerate(values)]
    conn = connect(settings.dsn())
    try:
        last = first_offset + len(values) - 1
        commit_batch(conn, spec, batch_id, [], lines, {0: PartitionRange(first_offset, last)})
    finally:
        conn.close()


def _dlq_source_offsets(settings: Settings, spec: PipelineSpec) -> list[int]:
    """Source offset of every record readable in the DLQ, in DLQ order (duplicates would show twice)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "t", "enable.partition.eof": True})
    low, high = consumer.get_watermark_offsets(TopicPartition(spec.dlq_topic, 0), timeout=10)
    consumer.assign([TopicPartition(spec.dlq_topic, 0, low)])
    found: list[int] = []
    while low < high:
        message = consumer.poll(5.0)
        assert message is not None, "the DLQ did not deliver its records"
        if message.error() is None:
            found.append(int(dict(message.headers())[H_SOURCE_OFFSET]))
            if message.offset() == high - 1:
                break
    consumer.close()
    return found


def _confirmed(settings: Settings, spec: PipelineSpec) -> dict[int, int | None]:
    conn = connect(settings.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT kafka_offset, dlq_offset FROM quarantine WHERE kafka_topic = %s", (spec.topic,))
            return dict(cur.fetchall())
    finally:
        conn.close()


def _publish(publisher: DeadLetterPublisher, settings: Settings) -> int:
    conn = connect(settings.dsn())
    try:
        return publisher.publish(conn)
    finally:
        conn.close()


@pytest.fixture
def publisher(settings: Settings, spec: PipelineSpec, create_topic):  # noqa: ANN001, ANN201 - DeadLetterPublisher
    ensure_schema(settings.dsn(), [spec])
    create_topic(spec.topic, partitions=1)
    # one record per request, so a refused record does not take its neighbours with it
    dlq = DeadLetterPublisher(
        settings.kafka_bootstrap, spec.topic, spec.dlq_topic, producer_config={"linger.ms": 0,
                                                                                        "batch.num.messages": 1}
    )  # fmt: skip
    yield dlq
    dlq.close()


def test_retention_of_the_dlq_tail_stops_nothing(
    settings: Settings, spec: PipelineSpec, publisher: DeadLetterPublisher
) -> None:
    _quarantine(settings, spec, [b"a", b"b", b"c"])
    assert _publish(publisher, settings) == 3
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    [future] = admin.delete_records([TopicPartition(spec.dlq_topic, 0, 3)]).values()  # the quiet tail goes
    future.result(timeout=30)
    assert _dlq_source_offsets(settings, spec) == []
    _quarantine(settings, spec, [b"d", b"e"], first_offset=3, batch_id=1)
    assert _publish(publisher, settings) == 2
    assert _dlq_source_offsets(settings, spec) == [3, 4]
    assert _confirmed(settings, spec) == {0: 0, 1: 1, 2: 2, 3: 3, 4: 4}
    assert _publish(publisher, settings) == 0


def test_a_failed_delivery_is_sent_again_once_and_later_ones_are_not(
    settings: Settings, spec: PipelineSpec, publisher: DeadLetterPublisher
) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})

    def dlq_limit(max_bytes: int) -> None:
        entry = ConfigEntry("max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource("topic", spec.dlq_topic, incremental_configs=[entry])
        admin.incremental_alter_configs([resource])[resource].result(timeout=30)

    large = random.Random(7).randbytes(5_000)  # incompressible: the DLQ producer compresses with lz4
    _quarantine(settings, spec, [b"small", large, b"small", large, b"small", b"small"])
    dlq_limit(2_000)  # the broker refuses the large records; the small ones after them arrive
    with pytest.raises(SinkError, match=r"\[DLQ_PUBLISH_FAILED\] 2 of 6 records did not reach"):
        _publish(publisher, settings)
    assert _dlq_source_offsets(settings, spec) == [0, 2, 4, 5]
    assert {o for o, d in _confirmed(settings, spec).items() if d is None} == {1, 3}
    dlq_limit(DLQ_MAX_MESSAGE_BYTES)
    assert _publish(publisher, settings) == 2
    assert sorted(_dlq_source_offsets(settings, spec)) == [0, 1, 2, 3, 4, 5]  # each once
    assert None not in _confirmed(settings, spec).values()


def test_a_lost_confirmation_is_found_in_the_dlq_not_sent_twice(
    settings: Settings, spec: PipelineSpec, publisher: DeadLetterPublisher
) -> None:
    _quarantine(settings, spec, [b"a", b"b", b"c", b"d"])
    assert _publish(publisher, settings) == 4
    confirmed = _confirmed(settings, spec)
    # as if the process died after Kafka acknowledged the records but before Postgres recorded it
    conn = connect(settings.dsn())
    with conn, conn.cursor() as cur:
        cur.execute("UPDATE quarantine SET dlq_offset = NULL WHERE kafka_topic = %s", (spec.topic,))
        cur.execute("DELETE FROM dlq_progress WHERE dlq_topic = %s", (spec.dlq_topic,))
    conn.close()
    assert _publish(publisher, settings) == 0
    assert _dlq_source_offsets(settings, spec) == [0, 1, 2, 3]
    assert _confirmed(settings, spec) == confirmed


def test_deliveries_that_time_out_are_settled_exactly_once(
    settings: Settings,
    spec: PipelineSpec,
    create_topic,  # noqa: ANN001
    test_stack,  # noqa: ANN001
) -> None:
    """The broker freezes mid-publish: deliveries time out (some may still land); nothing is doubled."""
    ensure_schema(settings.dsn(), [spec])
    create_topic(spec.topic, partitions=1)
    broker = test_stack.kafka_nodes()[0].process.pid()
    assert broker is not None
    publisher = DeadLetterPublisher(
        settings.kafka_bootstrap, spec.topic, spec.dlq_topic, producer_config={"message.timeout.ms": 3_000}
    )
    recover = publisher.recover

    def recover_then_freeze(conn, partition: int) -> int:  # noqa: ANN001
        end = recover(conn, partition)
        os.kill(broker, signal.SIGSTOP)  # after the scan, before the sends
        return end

    _quarantine(settings, spec, [f"r{i}".encode() for i in range(20)])
    publisher.recover = recover_then_freeze  # type: ignore[method-assign]
    try:
        with pytest.raises(SinkError, match=r"\[DLQ_PUBLISH_FAILED\] 20 of 20 records did not reach"):
            _publish(publisher, settings)
    finally:
        os.kill(broker, signal.SIGCONT)
        publisher.recover = recover  # type: ignore[method-assign]
    assert set(_confirmed(settings, spec).values()) == {None}
    resent = _publish(publisher, settings)
    publisher.close()
    assert 0 <= resent <= 20  # what landed after the broker woke up is confirmed, the rest sent now
    assert sorted(_dlq_source_offsets(settings, spec)) == list(range(20))  # each exactly once
    assert None not in _confirmed(settings, spec).values()
