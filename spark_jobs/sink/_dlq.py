"""Publish quarantined records to the dead-letter topic, exactly once.

The ``quarantine`` table is the source of truth (written in the same transaction as the offsets).
Records are published after each commit, in source-offset order, to the DLQ partition with the
same number as their source partition. The last record of each DLQ partition carries its source
offset in a header, so the DLQ's own tail is the publication watermark: after a crash anywhere,
the next publish continues exactly where the topic ends, without a separate bookkeeping write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from psycopg2.extensions import connection as Connection

from tx_platform.errors import SinkError
from tx_platform.kafka_admin import ensure_topic, high_watermark, offset_consumer, partition_count
from tx_platform.producer import PRODUCER_DEFAULTS

#: Header names of DLQ records.
H_ERROR_CODE = "txp.error.code"
H_ERROR_MESSAGE = "txp.error.message"
H_SOURCE_TOPIC = "txp.source.topic"
H_SOURCE_PARTITION = "txp.source.partition"
H_SOURCE_OFFSET = "txp.source.offset"
H_SOURCE_TIMESTAMP = "txp.source.timestamp"
H_SEEN_AT = "txp.seen.at"

#: DLQ records carry a rejected value plus headers; allow twice the broker's default record size.
DLQ_MAX_MESSAGE_BYTES = 2 * 1024 * 1024 + 65_536


@dataclass
class _Failures:
    count: int = 0
    first: list[str] = field(default_factory=list)

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.count += 1
            if len(self.first) < 3:
                self.first.append(str(err))


def _iso(value: datetime | None) -> bytes:
    return b"" if value is None else value.astimezone(UTC).isoformat().encode()


class DeadLetterPublisher:
    """Publishes the quarantine rows of one source topic to its DLQ topic."""

    def __init__(self, bootstrap: str, source_topic: str, dlq_topic: str, replication: int = 1) -> None:
        self.bootstrap = bootstrap
        self.source_topic = source_topic
        self.dlq_topic = dlq_topic
        partitions = partition_count(bootstrap, source_topic)
        ensure_topic(bootstrap, dlq_topic, partitions, replication, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})
        self.partitions = partition_count(bootstrap, dlq_topic)
        if self.partitions < partitions:
            msg = (
                f"DLQ topic {dlq_topic!r} has {self.partitions} partitions but {source_topic!r} has {partitions}; "
                "the DLQ needs at least as many (one per source partition)"
            )
            raise SinkError(msg)
        # the producer's guarantees (idempotent, acks=all, compressed), with room for large rejects
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                **PRODUCER_DEFAULTS,
                "linger.ms": 10,
                "message.max.bytes": DLQ_MAX_MESSAGE_BYTES,
            }
        )
        self._consumer = offset_consumer(bootstrap)

    def published_up_to(self, partition: int) -> int:
        """Source offset of the last record published for ``partition`` (-1 when none)."""
        tp = TopicPartition(self.dlq_topic, partition)
        end = high_watermark(self._consumer, tp)
        if end == 0:
            return -1
        self._consumer.assign([TopicPartition(self.dlq_topic, partition, end - 1)])
        try:
            for _ in range(50):
                message = self._consumer.poll(1.0)
                if message is None or message.error() is not None:
                    continue
                headers = dict(message.headers() or [])
                offset = headers.get(H_SOURCE_OFFSET)
                if offset is None:
                    msg = f"{self.dlq_topic}[{partition}] ends with a record without {H_SOURCE_OFFSET}"
                    raise SinkError(msg)
                return int(offset)
        finally:
            self._consumer.unassign()
        msg = f"could not read the last record of {self.dlq_topic}[{partition}] to find what was published"
        raise SinkError(msg)

    def publish(self, conn: Connection) -> int:
        """Publish quarantine rows not in the DLQ yet; returns how many were sent."""
        failures = _Failures()
        sent = 0
        for partition in range(self.partitions):
            after = self.published_up_to(partition)
            with conn.cursor(name=f"dlq_{partition}") as cur:  # server-side cursor: rows may be large
                cur.itersize = 500
                cur.execute(
                    "SELECT kafka_offset, kafka_timestamp, raw_key, raw_value, error_code, reason, seen_at "
                    "FROM quarantine WHERE kafka_topic = %s AND kafka_partition = %s AND kafka_offset > %s "
                    "ORDER BY kafka_offset",
                    (self.source_topic, partition, after),
                )
                for offset, timestamp, key, value, code, reason, seen_at in cur:
                    headers: list[tuple[str, str | bytes | None]] = [
                        (H_ERROR_CODE, code.encode()),
                        (H_ERROR_MESSAGE, reason.encode()),
                        (H_SOURCE_TOPIC, self.source_topic.encode()),
                        (H_SOURCE_PARTITION, str(partition).encode()),
                        (H_SOURCE_OFFSET, str(offset).encode()),
                        (H_SOURCE_TIMESTAMP, _iso(timestamp)),
                        (H_SEEN_AT, _iso(seen_at)),
                    ]
                    self._send(partition, key, value, headers, failures)
                    sent += 1
            conn.commit()  # ends the read-only transaction of the named cursor
        remaining = self._producer.flush(60)
        if failures.count or remaining:
            msg = (
                f"[DLQ_PUBLISH_FAILED] {failures.count + remaining} of {sent} records did not reach "
                f"{self.dlq_topic}: {'; '.join(failures.first)} — they are in quarantine and will be "
                "published on the next batch"
            )
            raise SinkError(msg)
        return sent

    def _send(
        self,
        partition: int,
        key: memoryview | None,
        value: memoryview | None,
        headers: list[tuple[str, str | bytes | None]],
        failures: _Failures,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    self.dlq_topic,
                    key=None if key is None else bytes(key),
                    value=None if value is None else bytes(value),
                    partition=partition,
                    headers=headers,
                    on_delivery=failures.on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def close(self) -> None:
        """Flush and release the clients."""
        self._producer.flush(30)
        self._consumer.close()
