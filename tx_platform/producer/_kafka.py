"""Produce records into Kafka: idempotent, acks=all, batched and compressed, one flush at the end."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tx_platform.contract import (
    AvroRecordSerializer,
    Record,
    Registration,
    Serializer,
    register_contract,
    registry_client,
)
from tx_platform.errors import DeliveryError
from tx_platform.kafka_admin import PRODUCER_DEFAULTS, partition_count
from tx_platform.pipelines import PipelineSpec
from tx_platform.producer._faults import INJECTED_HEADER, FaultInjector


@dataclass
class DeliveryReport:
    """Counts of what Kafka acknowledged, and the first errors seen."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    #: also told of every delivery report (the producer's metrics: bytes and latency)
    observer: Callable[[KafkaError | None, Message], None] | None = field(default=None, repr=False, compare=False)

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka delivery callback."""
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(err))
        if self.observer is not None:
            self.observer(err, msg)

    @property
    def undelivered(self) -> int:
        """Records handed to the client and neither delivered nor reported failed."""
        return self.sent - self.delivered - self.failed


class RecordProducer:
    """Context manager around a confluent-kafka producer for one pipeline; flushes once on exit."""

    def __init__(
        self,
        bootstrap: str,
        spec: PipelineSpec,
        serializer: Serializer,
        extra_config: dict[str, Any] | None = None,
        flush_timeout: float = 120.0,
        bad_ratio: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.spec = spec
        self.topic = spec.topic
        self._bootstrap = bootstrap
        self.faults = FaultInjector(bad_ratio, seed, serializer, spec) if bad_ratio > 0 else None
        #: Sums of every decimal field over the good records sent (what the warehouse must add up to).
        self._decimals = [f.name for f in spec.contract.fields if f.postgres_type.startswith("numeric")]
        self.good_totals: dict[str, Decimal] = dict.fromkeys(self._decimals, Decimal(0))
        self._serializer = serializer
        self._flush_timeout = flush_timeout
        self.report = DeliveryReport()
        config = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **(extra_config or {})}
        self._producer = Producer(config)

    def check_reachable(self, timeout: float = 15.0) -> None:
        """Fail fast, before producing anything, when Kafka or the topic is not there."""
        partition_count(self._bootstrap, self.topic, timeout)

    def send(self, record: Record) -> None:
        """Queue one record keyed by the spec's key field (or a bad variant of it); serve callbacks without blocking."""
        key: bytes
        value: bytes | None
        headers: list[tuple[str, str | bytes | None]] | None
        if self.faults is None:
            key, value, headers = str(record[self.spec.kafka_key]).encode(), self._serializer(record), None
            injected = False
        else:
            out = self.faults.outgoing(record)
            key, value = out.key, out.value
            injected = out.injected is not None
            headers = [(INJECTED_HEADER, out.injected.encode())] if out.injected else None
        if not injected:
            for name in self._decimals:
                self.good_totals[name] += record[name]
        while True:
            try:
                self._producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=self.report.on_delivery
                )
                break
            except BufferError:
                # local queue full: let librdkafka send and serve callbacks, then retry this record
                self._producer.poll(0.05)
        self.report.sent += 1
        self._producer.poll(0)

    def __enter__(self) -> RecordProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._producer.flush(self._flush_timeout)
        # whatever librdkafka still holds after the flush deadline was not delivered
        self.report.failed += self.report.undelivered


def produce(
    records: Iterable[Record],
    producer: RecordProducer,
    rate: float = 0.0,
    on_progress: Callable[[int], None] | None = None,
) -> DeliveryReport:
    """Send records at up to ``rate`` per second (0 = as fast as possible).

    Raises :class:`DeliveryError` when any record was not acknowledged.
    """
    started = time.monotonic()
    with producer:
        for n, record in enumerate(records, start=1):
            producer.send(record)
            if rate > 0:
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            if on_progress is not None and n % 1_000 == 0:
                on_progress(1_000)
        if on_progress is not None:
            on_progress(producer.report.sent % 1_000)
    report = producer.report
    if report.failed:
        errors = "; ".join(report.errors)
        msg = f"[NOT_DELIVERED] {report.failed} of {report.sent} records were not acknowledged by Kafka: {errors}"
        raise DeliveryError(msg)
    return report


def open_producer(
    spec: PipelineSpec,
    bootstrap: str,
    registry_url: str,
    bad_ratio: float = 0.0,
    seed: int = 0,
    schema_str: str | None = None,
) -> tuple[RecordProducer, Registration]:
    """Register ``spec``'s contract (or ``schema_str``; BACKWARD), check Kafka and the topic, return a producer.

    Everything that can refuse (registry, broker, topic) is asked before the first record is sent.
    """
    text = schema_str or spec.contract.schema_str
    client = registry_client(registry_url)
    registration = register_contract(client, registry_url, text, spec.subject)
    serializer = AvroRecordSerializer(client, spec.topic, text)
    producer = RecordProducer(bootstrap, spec, serializer, bad_ratio=bad_ratio, seed=seed)
    producer.check_reachable()
    return producer, registration
