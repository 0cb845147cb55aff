"""Produce records into Kafka: idempotent, acks=all, batched and compressed, one flush at the end.

Per record the Python side does as little as it can: the Avro body comes from a writer compiled
for the registered schema (:class:`WireEncoder`), ``produce()`` gets positional arguments, the
delivery callback only counts (one per record: that is how we know what was acknowledged), and
callbacks are served every ``POLL_EVERY`` records or while a rate limit waits, not after each one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from tx_platform.contract import Record, Registration, Serializer, register_contract, registry_client
from tx_platform.errors import DeliveryError
from tx_platform.kafka_admin import PRODUCER_DEFAULTS, partition_count
from tx_platform.pipelines import PipelineSpec
from tx_platform.producer._encoder import WireEncoder
from tx_platform.producer._faults import INJECTED_HEADER, FaultInjector
from tx_platform.producer._parallel import can_prepare_in_child, prepared_in_child

#: Records sent between two serves of delivery callbacks (poll(0)) when not rate limited.
POLL_EVERY = 512
#: Kafka headers of one record.
Headers = list[tuple[str, str | bytes | None]]
#: librdkafka settings on top of PRODUCER_DEFAULTS (guarantees unchanged: idempotent, acks=all). A
#: longer linger fills bigger lz4 batches: fewer requests for the broker on the same 2 cores.
THROUGHPUT_CONFIG: dict[str, object] = {"linger.ms": 50}


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
        self._key = spec.kafka_key
        self._unpolled = 0
        #: extra headers of particular records, by their natural key (e.g. injected fraud's ground truth)
        self.record_headers: Mapping[str, Headers] = {}
        config = {
            "bootstrap.servers": bootstrap,
            **PRODUCER_DEFAULTS,
            **THROUGHPUT_CONFIG,
            **(extra_config or {}),
            "on_delivery": self.report.on_delivery,  # one callback per record, for every record
        }
        self._producer = Producer(config)
        self._produce = self._producer.produce

    def check_reachable(self, timeout: float = 15.0) -> None:
        """Fail fast, before producing anything, when Kafka or the topic is not there."""
        partition_count(self._bootstrap, self.topic, timeout)

    def prepare(self, record: Record) -> tuple[bytes, bytes | None, Headers | None]:
        """``(key, value, headers or None)`` of one record; adds a good record's decimals to the totals.

        Headers: the injected fault's kind (:data:`INJECTED_HEADER`) and any of :attr:`record_headers`.
        """
        key: bytes
        value: bytes | None
        injected: str | None
        extra = self.record_headers.get(str(record.get(self.spec.natural_key))) if self.record_headers else None
        if self.faults is None or extra:  # a record with headers of its own (fraud ground truth) is never made bad
            key, value, injected = str(record[self._key]).encode(), self._serializer(record), None
        else:
            out = self.faults.outgoing(record)
            key, value, injected = out.key, out.value, out.injected
        if injected is None:
            totals = self.good_totals
            for name in self._decimals:
                totals[name] += record[name]
        headers: Headers | None = None if injected is None else [(INJECTED_HEADER, injected.encode())]
        if extra:
            headers = [*(headers or []), *extra]
        return key, value, headers

    def send(self, record: Record) -> None:
        """Queue one record keyed by the spec's key field (or a bad variant of it); serve callbacks now and then."""
        self.send_prepared(*self.prepare(record))

    def send_prepared(self, key: bytes, value: bytes | None, headers: Headers | None = None) -> None:
        """Queue a record :meth:`prepare` made (here or in the preparing process)."""
        try:
            self._produce(self.topic, value, key, headers=headers)
        except BufferError:
            self._produce_when_room(key, value, headers)
        self.report.sent += 1
        self._unpolled += 1
        if self._unpolled >= POLL_EVERY:
            self._unpolled = 0
            self._producer.poll(0)

    def send_chunk(self, keys: list[bytes], values: list[bytes | None], kinds: list[Headers | None]) -> None:
        """Queue prepared records (a chunk from the preparing process): :meth:`send_prepared` with less per record."""
        produce, topic, poll = self._produce, self.topic, self._producer.poll
        queued = 0
        try:
            for key, value, headers in zip(keys, values, kinds, strict=True):
                try:
                    if headers is None:
                        produce(topic, value, key)
                    else:
                        produce(topic, value, key, headers=headers)
                except BufferError:
                    self._produce_when_room(key, value, headers)
                queued += 1
                if not queued % POLL_EVERY:
                    poll(0)
        finally:
            self.report.sent += queued  # exact even when a produce() raised mid-chunk

    def _produce_when_room(self, key: bytes, value: bytes | None, headers: list[Any] | None) -> None:
        """The local queue is full: let librdkafka send and serve callbacks, then queue the record."""
        while True:
            self._producer.poll(0.05)
            try:
                self._produce(self.topic, value, key, headers=headers)
            except BufferError:
                continue
            return

    def wait(self, seconds: float) -> None:
        """Serve delivery callbacks for up to ``seconds`` (the rate limit's pause; returns early after serving one)."""
        self._unpolled = 0
        self._producer.poll(seconds)

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
    prepare_in_child: bool = False,
) -> DeliveryReport:
    """Send records at up to ``rate`` per second (0 = as fast as possible).

    With ``prepare_in_child`` and no rate limit (on Linux), forked processes generate and encode
    the records while this one hands them to Kafka (see :mod:`tx_platform.producer._parallel`): one,
    or one per CPU for records in blocks without fault injection; the same records in the same order,
    the same checks. Raises :class:`DeliveryError` when any
    record was not acknowledged.
    """
    started = time.monotonic()
    in_child = prepare_in_child and rate <= 0 and can_prepare_in_child()
    with producer:
        if in_child:
            with closing(prepared_in_child(records, producer)) as chunks:  # stops the children on any error here
                for keys, values, kinds in chunks:
                    producer.send_chunk(keys, values, kinds)
                    if on_progress is not None:
                        on_progress(len(keys))
        else:
            for n, record in enumerate(records, start=1):
                producer.send(record)
                if rate > 0:
                    ahead = n / rate - (time.monotonic() - started)
                    while ahead > 0:  # poll() returns early when it served a callback
                        producer.wait(ahead)
                        ahead = n / rate - (time.monotonic() - started)
                if on_progress is not None and n % 1_000 == 0:
                    on_progress(1_000)
        if on_progress is not None and not in_child:  # the chunks were all reported
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
    # the id the registry gave the schema, in a header built once; the bodies from a compiled writer
    serializer = WireEncoder(text, registration.schema_id)
    producer = RecordProducer(bootstrap, spec, serializer, bad_ratio=bad_ratio, seed=seed)
    producer.check_reachable()
    return producer, registration
