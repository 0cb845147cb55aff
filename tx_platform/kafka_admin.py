"""Kafka helpers shared by Dagster resources, the producer, the sink and the CLI."""

from __future__ import annotations

import contextlib
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tx_platform.errors import ServiceUnavailableError, TopicNotFoundError

#: librdkafka settings of every producer we run (the generator's and the sink's dead-letter
#: publisher): idempotent, acks=all, batched and compressed, so DESIGN.md's guarantees hold.
PRODUCER_DEFAULTS: dict[str, object] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "message.timeout.ms": 120_000,
}

#: Errors that mean "ask again shortly": leadership is moving, the broker is busy, or the client's
#: metadata does not know a topic created a moment ago yet (the local _UNKNOWN_* codes; seen on the
#: 3+3 cluster right after the sink created its dead-letter topic).
_TRANSIENT_CODES = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._DESTROY_BROKER,  # the client dropped a broker that left the metadata mid-request
    }
)


def _transient(error: KafkaError) -> bool:
    """An error worth asking again for: retriable by Kafka's own account, or one of :data:`_TRANSIENT_CODES`."""
    return error.retriable() or error.code() in _TRANSIENT_CODES


def _unreachable(bootstrap: str, exc: Exception) -> ServiceUnavailableError:
    msg = f"Kafka did not answer on {bootstrap} ({exc}) — is the stack up? run `make up`"
    return ServiceUnavailableError(msg)


def _ready_on(address: str, name: str, timeout: float) -> bool:
    """True when the broker at ``address`` reports ``name`` with a leader for every partition.

    A fresh client bootstrapped with one address asks that broker first, so this reads that
    broker's own view of the metadata.
    """
    probe = AdminClient({"bootstrap.servers": address})
    info = probe.list_topics(topic=name, timeout=timeout).topics.get(name)
    if info is None or info.error is not None or not info.partitions:
        return False
    return all(p.leader >= 0 and p.error is None for p in info.partitions.values())


def ensure_topic(
    bootstrap: str,
    name: str,
    partitions: int,
    replication: int,
    config: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> bool:
    """Create ``name`` if missing and wait until every broker knows it with leaders. True if created now.

    Creation returns before partitions have leaders, and each broker applies new metadata on its
    own: a client asking another broker right after would be told the topic does not exist.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _unreachable(bootstrap, exc) from exc
    created = name not in metadata.topics
    if created:
        futures = admin.create_topics([NewTopic(name, partitions, replication, config=config or {})])
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            created = False
    brokers = [f"{b.host}:{b.port}" for b in metadata.brokers.values()]
    deadline = time.monotonic() + timeout
    while not all(_ready_on(address, name, timeout) for address in brokers):
        if time.monotonic() > deadline:
            msg = f"topic {name!r} has no leader for every partition on every broker after {timeout:.0f} s"
            raise ServiceUnavailableError(msg)
        time.sleep(0.2)
    return created


def partition_count(bootstrap: str, topic: str, timeout: float = 20.0, appear_within: float = 0.0) -> int:
    """Partitions of ``topic``; TopicNotFoundError when it does not exist.

    ``appear_within``: seconds to keep asking (with fresh metadata) for a topic that was just
    created. Each broker applies new metadata on its own, and the client may ask any of them, so
    a topic made a moment ago can still be unknown to the broker that answers.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + appear_within
    while True:
        try:
            info = admin.list_topics(topic=topic, timeout=timeout).topics.get(topic)
        except KafkaException as exc:
            raise _unreachable(bootstrap, exc) from exc
        if info is not None and info.error is None:
            return len(info.partitions)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    msg = (
        f"topic {topic!r} does not exist — create it with `txp topics create` or by materializing "
        "kafka/transactions in Dagster"
    )
    raise TopicNotFoundError(msg)


def high_watermark(consumer: Consumer, partition: TopicPartition, timeout: float = 20.0) -> int:
    """End offset of one partition, retrying while leadership moves."""
    return partition_watermarks(consumer, partition, timeout)[1]


def partition_watermarks(consumer: Consumer, partition: TopicPartition, timeout: float = 20.0) -> tuple[int, int]:
    """(log start offset, end offset) of one partition, retrying while leadership moves.

    Each attempt is short, and a failed one refreshes the client's metadata of the topic: a
    long-lived consumer that only queries watermarks keeps asking the leader it cached, and when
    that broker died its requests only time out, long after another broker took the partition
    over (seen with the sink's DLQ consumer on the 3+3 cluster after a kill -9 of a leader).
    """
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        attempt = max(1.0, min(5.0, deadline - time.monotonic()))
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=attempt)
            return int(low), int(high)
        except KafkaException as exc:
            if not _transient(exc.args[0]) or time.monotonic() > deadline:
                raise
        with contextlib.suppress(KafkaException):
            consumer.list_topics(partition.topic, timeout=attempt)
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def offset_consumer(bootstrap: str) -> Consumer:
    """A consumer for reading watermarks and single records; it joins no group and commits nothing."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "txp-offset-probe",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )


def end_offsets(bootstrap: str, topic: str, timeout: float = 20.0) -> dict[int, int]:
    """High watermark per partition (the offset the next record will get)."""
    return {p: high for p, (_low, high) in watermarks(bootstrap, topic, timeout).items()}


def topic_id(bootstrap: str, topic: str, timeout: float = 60.0) -> str:
    """Kafka's id of ``topic`` (a UUID; a topic deleted and created again gets a new one).

    Asked again, for up to ``timeout`` seconds, while the answer is a timeout or another transient
    error (a controller being elected, a broker restarting): the sink asks at every batch, and one
    slow answer must not stop it.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        attempt = max(1.0, min(15.0, deadline - time.monotonic()))
        future = admin.describe_topics(TopicCollection([topic]), request_timeout=attempt)[topic]
        try:
            return str(future.result(timeout=attempt + 5).topic_id)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                partition_count(bootstrap, topic, timeout)  # raises TopicNotFoundError with its hint
            if not _transient(error) or time.monotonic() >= deadline:
                raise _unreachable(bootstrap, exc) from exc
        time.sleep(0.5)


def watermarks(bootstrap: str, topic: str, timeout: float = 20.0) -> dict[int, tuple[int, int]]:
    """(log start offset, end offset) per partition: what retention kept, and where the next record goes."""
    count = partition_count(bootstrap, topic, timeout)
    consumer = offset_consumer(bootstrap)
    try:
        return {p: partition_watermarks(consumer, TopicPartition(topic, p), timeout) for p in range(count)}
    except KafkaException as exc:
        raise _unreachable(bootstrap, exc) from exc
    finally:
        consumer.close()
