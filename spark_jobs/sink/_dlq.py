"""Publish quarantined records to the dead-letter topic, exactly once (and the outbox machinery it uses).

The ``quarantine`` table is the source of truth (written in the same transaction as the offsets).
After each commit, rows not yet delivered (``dlq_offset IS NULL``) are sent in source-offset order
to the DLQ partition with the same number as their source partition, and each row gets the DLQ
offset Kafka acknowledged. Progress therefore lives in Postgres and survives the DLQ's retention.

A delivery can be ambiguous: the process dies after Kafka wrote a record but before Postgres
recorded it, or a delivery times out although the broker wrote it. ``dlq_progress.scanned_to``
marks, per DLQ partition, the offset below which every DLQ record is reflected in ``quarantine``.
Before sending anything, the publisher reads the DLQ from there to its end and confirms the rows
it finds (by their ``txp.source.offset`` header) instead of sending them again; ``scanned_to``
only advances past offsets that are settled. One publisher per topic runs at a time (the sink's
lease), so nothing else writes the DLQ partitions in between.

The machinery is :class:`OutboxPublisher`, for any "row in Postgres, then record in Kafka exactly
once" outbox (the fraud query's alerts use it too); :class:`DeadLetterPublisher` is its DLQ.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Message, Producer, TopicPartition
from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from tx_platform.errors import SinkError
from tx_platform.kafka_admin import (
    PRODUCER_DEFAULTS,
    ensure_topic,
    offset_consumer,
    partition_count,
    partition_watermarks,
)

log = logging.getLogger(__name__)

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
class _Deliveries:
    """Delivery reports of one publish: the topic offset of each row's identity, and the failures."""

    offsets: dict[int, dict[str, int]] = field(default_factory=dict)  # partition -> identity -> offset
    failed: dict[int, int] = field(default_factory=dict)  # partition -> count
    first_errors: list[str] = field(default_factory=list)

    def callback(self, partition: int, identity: str) -> Any:  # noqa: ANN401 - a librdkafka callback
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.offsets.setdefault(partition, {})[identity] = int(msg.offset() or 0)
                return
            self.failed[partition] = self.failed.get(partition, 0) + 1
            if len(self.first_errors) < 3:
                self.first_errors.append(f"{identity}: {err}")

        return on_delivery


def _iso(value: datetime | None) -> bytes:
    return b"" if value is None else value.astimezone(UTC).isoformat().encode()


#: One outbox row to send: (identity, key, value, headers).
Outgoing = tuple[str, bytes | memoryview | None, bytes | memoryview | None, list[tuple[str, str | bytes | None]]]


class OutboxPublisher:
    """Publishes rows of a Postgres table to a Kafka topic exactly once ("row first, then record").

    A row's delivery is recorded on the row (its topic offset) once Kafka acknowledged it; the
    progress table ``dlq_progress`` (per topic and partition, for any outbox topic) holds
    ``scanned_to``, below which every record of the topic is reflected in the table. Before sending,
    :meth:`recover` reads the partition from there and confirms the rows it finds by their identity
    header instead of sending them again. Subclasses say which rows are pending (:meth:`pending`),
    how a record names its row (:meth:`identity`) and how a delivery is recorded (:meth:`confirm`).
    One publisher per topic at a time (its writer's lease), so nothing else writes its partitions.
    """

    #: What :meth:`recover`'s errors and logs call the topic.
    kind = "outbox"

    def __init__(self, bootstrap: str, topic: str, producer_config: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        # made just before (ensure_topic): the broker that answers may not know it yet
        self.partitions = partition_count(bootstrap, topic, appear_within=10.0)
        # the producer's guarantees (idempotent, acks=all, compressed)
        self._producer = Producer(
            {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "linger.ms": 10, **(producer_config or {})}
        )
        self._consumer = offset_consumer(bootstrap)

    # -- what a subclass says ---------------------------------------------------------------------
    def pending(self, conn: Connection, partition: int) -> Iterator[Outgoing]:
        """Rows of ``partition`` not delivered yet, in the order to send them."""
        raise NotImplementedError

    def identity(self, headers: Mapping[str, Any]) -> str | None:
        """The identity of the row a record of the topic carries, or None when it is not one of ours."""
        raise NotImplementedError

    def confirm(self, cur: Cursor, partition: int, found: Mapping[str, int]) -> None:
        """Record the topic offsets of delivered rows (identity -> offset)."""
        raise NotImplementedError

    # -- the machinery ----------------------------------------------------------------------------
    def _scanned_to(self, conn: Connection, partition: int) -> int:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT scanned_to FROM dlq_progress WHERE dlq_topic = %s AND partition = %s",
                (self.topic, partition),
            )
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def _settle(self, conn: Connection, partition: int, found: Mapping[str, int], scanned_to: int | None) -> None:
        """Record the offsets of delivered rows and, when given, advance ``scanned_to``; commits."""
        with conn.cursor() as cur:
            if found:
                self.confirm(cur, partition, found)
            if scanned_to is not None:
                cur.execute(
                    """
                    INSERT INTO dlq_progress (dlq_topic, partition, scanned_to) VALUES (%s, %s, %s)
                    ON CONFLICT (dlq_topic, partition) DO UPDATE
                    SET scanned_to = GREATEST(dlq_progress.scanned_to, EXCLUDED.scanned_to), updated_at = now()
                    """,
                    (self.topic, partition, scanned_to),
                )
        conn.commit()

    def recover(self, conn: Connection, partition: int) -> int:
        """Read the partition past ``scanned_to`` and confirm the rows found there; returns its end.

        Settles every ambiguous delivery of an earlier publish (crash before the Postgres update,
        delivery reported as failed but written), so none of those rows is sent twice.
        """
        low, end = partition_watermarks(self._consumer, TopicPartition(self.topic, partition))
        start = max(self._scanned_to(conn, partition), low)  # retention may have taken a settled tail
        found: dict[str, int] = {}
        if start < end:
            self._consumer.assign([TopicPartition(self.topic, partition, start)])
            try:
                position, idle = start, 0
                while position < end:
                    message = self._consumer.poll(1.0)
                    if message is None:
                        idle += 1
                        if idle > 30:
                            where = f"{self.topic}[{partition}] {position}..{end - 1}"
                            msg = f"[{self.kind.upper()}_SCAN_FAILED] could not read {where} within 30 s"
                            raise SinkError(msg)
                        continue
                    if message.error() is not None:
                        continue  # partition EOF or a transient fetch error: poll on
                    position = int(message.offset() or 0) + 1
                    headers: dict[str, Any] = dict(message.headers() or [])  # type: ignore[arg-type]
                    identity = self.identity(headers)
                    if identity is None:
                        log.warning("%s[%d] offset %d is not a record of this %s; ignored", self.topic, partition,
                                    position - 1, self.kind)  # fmt: skip
                        continue
                    found.setdefault(identity, position - 1)
            finally:
                self._consumer.unassign()
        self._settle(conn, partition, found, end)
        if found:
            log.info("%s[%d]: %d records were already delivered; confirmed, not sent again", self.topic,
                     partition, len(found))  # fmt: skip
        return end

    def publish(self, conn: Connection) -> int:
        """Publish the rows not delivered yet, exactly once; returns how many were sent."""
        deliveries = _Deliveries()
        ends: dict[int, int] = {}
        sent = 0
        for partition in range(self.partitions):
            ends[partition] = self.recover(conn, partition)
            for identity, key, value, headers in self.pending(conn, partition):
                self._send(partition, key, value, headers, deliveries.callback(partition, identity))
                sent += 1
            conn.commit()  # ends the read-only transaction of the reading cursor
        remaining = self._producer.flush(60)
        for partition in range(self.partitions):
            delivered = deliveries.offsets.get(partition, {})
            settled = not deliveries.failed.get(partition) and not remaining
            # past a failure, only what recover() read is settled: the next publish scans the rest
            scanned_to = max([ends[partition], *[o + 1 for o in delivered.values()]]) if settled else None
            self._settle(conn, partition, delivered, scanned_to)
        failed = sum(deliveries.failed.values()) + remaining
        if failed:
            msg = (
                f"[{self.kind.upper()}_PUBLISH_FAILED] {failed} of {sent} records did not reach {self.topic}: "
                f"{'; '.join(deliveries.first_errors) or 'still queued after 60 s'} — they stay pending and "
                "are published on the next batch (a delivery that in fact arrived is found then, not sent twice)"
            )
            raise SinkError(msg)
        return sent

    def _send(
        self,
        partition: int,
        key: bytes | memoryview | None,
        value: bytes | memoryview | None,
        headers: list[tuple[str, str | bytes | None]],
        on_delivery: Any,  # noqa: ANN401 - a librdkafka callback
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    self.topic,
                    key=None if key is None else bytes(key),
                    value=None if value is None else bytes(value),
                    partition=partition,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def close(self) -> None:
        """Flush and release the clients."""
        self._producer.flush(30)
        self._consumer.close()


class DeadLetterPublisher(OutboxPublisher):
    """Publishes the quarantine rows of one source topic to its DLQ topic."""

    kind = "dlq"

    def __init__(
        self,
        bootstrap: str,
        source_topic: str,
        dlq_topic: str,
        replication: int = 1,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.source_topic = source_topic
        self.dlq_topic = dlq_topic
        partitions = partition_count(bootstrap, source_topic)
        ensure_topic(bootstrap, dlq_topic, partitions, replication, {"max.message.bytes": str(DLQ_MAX_MESSAGE_BYTES)})
        # room for large rejects
        super().__init__(bootstrap, dlq_topic, {"message.max.bytes": DLQ_MAX_MESSAGE_BYTES, **(producer_config or {})})
        if self.partitions < partitions:
            msg = (
                f"DLQ topic {dlq_topic!r} has {self.partitions} partitions but {source_topic!r} has {partitions}; "
                "the DLQ needs at least as many (one per source partition)"
            )
            raise SinkError(msg)

    def identity(self, headers: Mapping[str, Any]) -> str | None:
        """The source offset a DLQ record carries (``txp.source.offset``), when it is of our source topic."""
        source = headers.get(H_SOURCE_OFFSET)
        if source is None or headers.get(H_SOURCE_TOPIC) != self.source_topic.encode():
            return None
        return bytes(source).decode()

    def confirm(self, cur: Cursor, partition: int, found: Mapping[str, int]) -> None:
        """Set ``quarantine.dlq_offset`` of the delivered rows."""
        cur.execute(
            """
            UPDATE quarantine q SET dlq_offset = v.dlq_offset
            FROM unnest(%s::bigint[], %s::bigint[]) AS v(source_offset, dlq_offset)
            WHERE q.kafka_topic = %s AND q.kafka_partition = %s AND q.kafka_offset = v.source_offset
              AND q.dlq_offset IS NULL
            """,
            ([int(k) for k in found], list(found.values()), self.source_topic, partition),
        )

    def pending(self, conn: Connection, partition: int) -> Iterator[Outgoing]:
        """Quarantine rows of the source partition without a DLQ offset, in source-offset order."""
        with conn.cursor(name=f"dlq_{partition}") as cur:  # server-side cursor: rows may be large
            cur.itersize = 500
            cur.execute(
                "SELECT kafka_offset, kafka_timestamp, raw_key, raw_value, error_code, reason, seen_at "
                "FROM quarantine WHERE kafka_topic = %s AND kafka_partition = %s AND dlq_offset IS NULL "
                "ORDER BY kafka_offset",
                (self.source_topic, partition),
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
                yield str(offset), key, value, headers
