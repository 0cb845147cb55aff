"""The streaming sink: Kafka `transactions` -> Postgres `transactions` / `quarantine`, exactly once.

Each micro-batch is decoded in Spark, collected to the driver as CSV lines, and committed by
:func:`tx_platform.warehouse.commit_batch` together with its Kafka offsets. Postgres, not the
Spark checkpoint, is the source of truth for progress: without a checkpoint the query starts
from the offsets committed there, and a batch replayed after a crash writes nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from spark_jobs.sink._decode import decode, render
from tx_platform.config import Settings
from tx_platform.contract import load_contract
from tx_platform.errors import ServiceUnavailableError, SinkError
from tx_platform.warehouse import (
    PartitionRange,
    commit_batch,
    committed_offsets,
    connect,
    ensure_schema,
)

log = logging.getLogger(__name__)

QUERY_NAME = "transactions_sink"


@dataclass
class SinkStats:
    """Totals over the batches of one run of the query."""

    batches: int = 0
    records: int = 0
    inserted: int = 0
    quarantined: int = 0
    skipped: int = 0
    seconds: float = 0.0
    per_batch: list[dict[str, float]] = field(default_factory=list)


def topic_partitions(bootstrap: str, topic: str, timeout: float = 15.0) -> list[int]:
    """Partition ids of ``topic``; a clear error when Kafka or the topic is missing."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(topic=topic, timeout=timeout)
    except Exception as exc:  # KafkaException carries librdkafka's own text
        msg = f"Kafka did not answer on {bootstrap} within {timeout:.0f} s ({exc}) — is the stack up? run `make up`"
        raise ServiceUnavailableError(msg) from exc
    info = metadata.topics.get(topic)
    if info is None or info.error is not None:
        msg = f"topic {topic!r} does not exist on {bootstrap} — materialize kafka/transactions first"
        raise ServiceUnavailableError(msg)
    return sorted(info.partitions)


@dataclass(frozen=True)
class SinkConfig:
    """What the sink needs to know; built from Settings (CLI) or from Dagster resources."""

    kafka_bootstrap: str
    dsn: str = field(repr=False)
    topic: str
    checkpoint_root: str
    max_offsets_per_trigger: int = 200_000

    @classmethod
    def from_settings(cls, settings: Settings) -> SinkConfig:
        """Sink settings from the platform settings."""
        return cls(
            kafka_bootstrap=settings.kafka_bootstrap,
            dsn=settings.dsn(),
            topic=settings.topic,
            checkpoint_root=str(settings.checkpoint_root),
            max_offsets_per_trigger=settings.max_offsets_per_trigger,
        )

    @property
    def checkpoint(self) -> str:
        """Checkpoint location of this topic's query."""
        return f"{self.checkpoint_root.rstrip('/')}/sink-{self.topic}"


class TransactionSink:
    """Builds and runs the streaming query for one topic."""

    def __init__(self, spark: SparkSession, config: SinkConfig) -> None:
        self.spark = spark
        self.config = config
        self.contract = load_contract()
        self.stats = SinkStats()

    def starting_offsets(self) -> str:
        """Offsets committed in Postgres for every partition (earliest where none), as Spark JSON."""
        partitions = topic_partitions(self.config.kafka_bootstrap, self.config.topic)
        conn = connect(self.config.dsn)
        try:
            committed = committed_offsets(conn, self.config.topic)
        finally:
            conn.close()
        if not committed:
            return "earliest"
        # -2 is Spark's "earliest" for a partition without committed offsets
        return json.dumps({self.config.topic: {str(p): committed.get(p, -2) for p in partitions}})

    def _process_batch(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        lines = render(decode(batch, self.contract), self.contract).collect()
        if not lines:
            return
        ranges: dict[int, PartitionRange] = {}
        good_lines: list[str] = []
        bad_lines: list[str] = []
        for row in lines:
            (good_lines if row.ok else bad_lines).append(row.line)
            current = ranges.get(row.partition)
            offset = int(row.offset)
            ranges[row.partition] = (
                PartitionRange(offset, offset)
                if current is None
                else PartitionRange(min(current.first, offset), max(current.last, offset))
            )
        conn = connect(self.config.dsn)
        try:
            result = commit_batch(conn, self.config.topic, batch_id, good_lines, bad_lines, ranges)
        finally:
            conn.close()
        elapsed = time.monotonic() - started
        s = self.stats
        s.batches += 1
        s.records += result.records
        s.inserted += result.inserted
        s.quarantined += result.quarantined
        s.skipped += result.skipped
        s.per_batch.append({"batch_id": batch_id, "records": result.records, "seconds": round(elapsed, 3)})
        log.info(
            "batch %d: %d records -> %d inserted, %d quarantined, %d already committed (%.2f s)",
            batch_id, result.records, result.inserted, result.quarantined, result.skipped, elapsed,
        )  # fmt: skip

    def start(self, available_now: bool = True, processing_time: str = "5 seconds") -> StreamingQuery:
        """Start the query; AvailableNow processes what is there and stops, else runs continuously."""
        ensure_schema(self.config.dsn)
        stream = (
            self.spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", self.config.kafka_bootstrap)
            .option("subscribe", self.config.topic)
            .option("startingOffsets", self.starting_offsets())
            .option("maxOffsetsPerTrigger", self.config.max_offsets_per_trigger)
            .option("failOnDataLoss", "true")
            .load()
        )
        writer = (
            stream.writeStream.queryName(QUERY_NAME)
            .foreachBatch(self._process_batch)
            .option("checkpointLocation", self.config.checkpoint)
        )
        writer = writer.trigger(availableNow=True) if available_now else writer.trigger(processingTime=processing_time)
        return writer.start()

    def run_available_now(self) -> SinkStats:
        """Process every record available now, then stop. Raises SinkError if the query failed."""
        started = time.monotonic()
        query = self.start(available_now=True)
        await_query(query)
        self.stats.seconds = round(time.monotonic() - started, 3)
        return self.stats


def await_query(query: StreamingQuery, timeout: float | None = None) -> None:
    """Wait for the query; surface its exception instead of hanging or failing silently."""
    try:
        finished = query.awaitTermination(int(timeout)) if timeout else query.awaitTermination()
    except StreamingQueryException as exc:
        msg = f"[SINK_QUERY_FAILED] the streaming sink stopped with an error: {exc}"
        raise SinkError(msg) from exc
    if timeout and not finished:
        query.stop()
    error = query.exception()
    if error is not None:
        msg = f"[SINK_QUERY_FAILED] the streaming sink stopped with an error: {error}"
        raise SinkError(msg)
